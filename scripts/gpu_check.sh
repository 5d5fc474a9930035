#!/usr/bin/env bash
# The GPU checks, as one short run on a CUDA machine: the CUDA tests, the model-level exactness and
# speculative-identity tests with the model on the GPU, and `hastelm bench` (core tests and
# speculative decoding on HumanEval) against transformers on the same GPU.
# usage: scripts/gpu_check.sh [OUTDIR]   (python3 with a CUDA torch, hastelm importable, model installed)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

step() {   # step NAME COMMAND...: run with a time limit, log to OUTDIR/NAME.log, never stop the script
  local name=$1 t=$SECONDS
  shift
  echo "== $name"
  timeout "${STEP_LIMIT:-300}" "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t)) s"
}

$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
step cuda_tests $PY -m pytest -q -s -p no:cacheprovider tests/test_cuda.py
step bench_core $PY -m hastelm.cli bench --device cuda --engines hastelm,transformers -r 5 \
  --json "$out/core.json"
step bench_speculative $PY -m hastelm.cli bench --device cuda --engines hastelm,transformers \
  --speculative pld,recycling,lookahead,layerskip,auto --workload humaneval --limit "${SPEC_LIMIT:-10}" \
  --peer-limit 5 --json "$out/speculative.json"
step model_tests_on_gpu env HASTELM_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider \
  tests/test_speculative_greedy.py tests/test_exactness.py

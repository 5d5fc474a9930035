#!/usr/bin/env bash
# The GPU checks, as one short run (~3-7 min) on a CUDA machine: the CUDA-graph decode tests and the
# CUDA tests, then the decode micro-benchmark (eager Transformer.forward vs CUDA graphs, bf16), then
# the same with torch.compile inside the graphs (B=1; it may run out of its time limit: reported).
# usage: scripts/gpu_check.sh [OUTDIR]      (OUTDIR: $OUT if set, else gpu-results)
# env:   MODEL       a .gguf / HF folder (e.g. SmolLM2-135M-Instruct.Q4_1.gguf); unset or missing: the
#                    tests use a tiny random llama and the benchmark a SmolLM2-135M-shaped random llama
#        MODEL_PARTS a glob of pieces to concatenate into MODEL (a file too big to travel in one piece)
#        .whl/       wheels the machine lacks (gguf, fastapi, pydantic, ...), installed to /tmp/site
#        GPU_CHECK_FULL=1  also the older, longer checks (bench against transformers, model tests on
#                    the GPU; they need the packaged default model)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-${1:-gpu-results}}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

step() {   # step NAME LIMIT_S COMMAND...: run with a time limit, log to OUTDIR/NAME.log, never stop the script
  local name=$1 limit=$2 t=$SECONDS
  shift 2
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t)) s" | tee -a "$out/$name.log"
}

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
if [ -n "${MODEL_PARTS:-}" ]; then
  MODEL=${MODEL:-/tmp/model.gguf}
  cat $MODEL_PARTS > "$MODEL"
fi
if [ -n "${MODEL:-}" ] && [ -e "$MODEL" ]; then
  export HASTELM_GPU_MODEL=$MODEL
  model_args=(--model "$MODEL")
else
  echo "MODEL unset or missing (${MODEL:-}): random weights" | tee "$out/env.log"
  unset MODEL
  model_args=()
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
} 2>&1 | tee -a "$out/env.log"

step tests 120 $PY -m pytest -x -q -s -p no:cacheprovider tests/test_gpu_graphs.py tests/test_cuda.py
step bench 120 $PY -m hastelm.gpu.bench "${model_args[@]}" --batches 1,8,64 --json "$out/bench.json"
step bench_compile 180 $PY -m hastelm.gpu.bench "${model_args[@]}" --batches 1 --compile --no-plain \
  --json "$out/bench_compile.json"

if [ "${GPU_CHECK_FULL:-0}" = 1 ]; then
  step bench_core 300 $PY -m hastelm.cli bench --device cuda --engines hastelm,transformers -r 5 \
    --json "$out/core.json"
  step model_tests_on_gpu 300 env HASTELM_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider \
    tests/test_speculative_greedy.py tests/test_exactness.py
fi

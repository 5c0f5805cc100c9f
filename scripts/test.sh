#!/usr/bin/env bash
# README's test command: set up a fresh machine, build, and run every test (ctest).
# The interop tests compare with transformers/safetensors/gguf/tokenizers/llama-cpp-python from
# the setup venv and are required here (QTRAIN_REQUIRE_INTEROP=1), never skipped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
bash "$root/scripts/build.sh"
export QTRAIN_VENV="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}"
export QTRAIN_REQUIRE_INTEROP=1
# llama-cpp-python (built once into a cached wheel) for the GGUF interop tests.
bash "$root/scripts/llama_cpp_wheel.sh"
# Real Llama 3 / Qwen2 vocabularies for the tokenizer tests (from llama-cpp-python's sdist).
QTRAIN_LLAMA_CPP_VOCAB_DIR="$(bash "$root/scripts/fetch_vocabs.sh")"
export QTRAIN_LLAMA_CPP_VOCAB_DIR
cd "${QTRAIN_BUILD:-$root/build}"
ctest --output-on-failure -j "${QTRAIN_JOBS:-$(nproc)}" "$@"

#!/usr/bin/env bash
# README's test command: set up a fresh machine, build, and run every test (ctest).
# The interop tests compare with transformers/safetensors/gguf/tokenizers/llama-cpp-python from
# the setup venv and are required here (QTRAIN_REQUIRE_INTEROP=1), never skipped.
#
# By default the build under test is instrumented: clang with AddressSanitizer and
# UndefinedBehaviorSanitizer (and libFuzzer's coverage hooks) in build-check/, so every test runs
# under the sanitizers, and afterwards each fuzz target runs for QTRAIN_FUZZ_SECONDS (60) from
# its seed corpus (scripts/fuzz.sh). QTRAIN_SANITIZE=0 tests a plain -O2 build in build/ instead.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
sanitize="${QTRAIN_SANITIZE:-1}"
if [[ "$sanitize" == 1 ]]; then
  export QTRAIN_BUILD="${QTRAIN_BUILD:-$root/build-check}"
  export QTRAIN_OPT_FLAGS="${QTRAIN_OPT_FLAGS:--O1}"
  export QTRAIN_CMAKE_ARGS="-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DQTRAIN_FUZZ=ON"
  source "$root/scripts/sanitizer_env.sh"
fi
bash "$root/scripts/build.sh"
export QTRAIN_VENV="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}"
export QTRAIN_REQUIRE_INTEROP=1
# llama-cpp-python (built once into a cached wheel) for the GGUF interop tests.
bash "$root/scripts/llama_cpp_wheel.sh"
# Real Llama 3 / Qwen2 vocabularies for the tokenizer tests (from llama-cpp-python's sdist).
QTRAIN_LLAMA_CPP_VOCAB_DIR="$(bash "$root/scripts/fetch_vocabs.sh")"
export QTRAIN_LLAMA_CPP_VOCAB_DIR
cd "${QTRAIN_BUILD:-$root/build}"
# ctest runs one test per core; LibTorch's OpenMP threads on top of that spin-wait against each
# other (a sanitized training step went from 0.07 s to 2.5 s), so each test gets one thread.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
ctest --output-on-failure -j "${QTRAIN_JOBS:-$(nproc)}" "$@"
if [[ "$sanitize" == 1 && $# -eq 0 ]]; then
  bash "$root/scripts/fuzz.sh" "${QTRAIN_FUZZ_SECONDS:-60}"
fi

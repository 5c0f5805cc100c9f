#!/usr/bin/env bash
# Installs what qtrain needs on a fresh Debian 12 machine. Idempotent: a second run only checks.
#   - Debian packages: compilers, CMake/Ninja, ccache, yaml-cpp, sentencepiece, nlohmann-json,
#     CLI11, PCRE2 and utf8proc (tokenizer.json pre-tokenizer regexes, NFC), Gloo's headers
#     (data-parallel training: c10d's ProcessGroupGloo includes them and the torch wheel lacks
#     them; the code is in libtorch_cpu), GoogleTest, Google Benchmark, and clang with its
#     sanitizer and libFuzzer runtimes (the instrumented test build; llvm for llvm-symbolizer) and
#     OpenMP runtime (libomp: at::parallel_for in qtrain's kernels; gcc builds use the wheel's libgomp).
#   - A virtual environment (outside the source tree) with PyPI's torch 2.11.0 wheel, whose
#     LibTorch qtrain links, plus the pinned reference packages the interop tests compare with.
#   - llama.cpp's Jinja engine and its real chat templates (scripts/fetch_jinja.sh, cached under
#     ~/.cache/qtrain; not committed): data.template auto renders a model's own chat_template.
# QTRAIN_VENV overrides the venv location (default ~/.cache/qtrain/venv).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}"
packages=(build-essential cmake ninja-build ccache pkg-config python3-venv
  libyaml-cpp-dev libsentencepiece-dev sentencepiece nlohmann-json3-dev libcli11-dev
  libpcre2-dev libutf8proc-dev libgloo-dev libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev libomp-14-dev llvm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python="${QTRAIN_BOOTSTRAP_PYTHON:-python3}"
stamp="$venv/.qtrain-requirements"
if [[ ! -x "$venv/bin/python3" ]]; then
  echo "setup: creating $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
if ! cmp -s "$here/requirements-test.txt" "$stamp"; then
  echo "setup: installing pinned Python packages into $venv (torch wheel with its CUDA libraries)"
  "$venv/bin/python3" -m pip install -q --no-cache-dir --disable-pip-version-check -r "$here/requirements-test.txt"
  cp "$here/requirements-test.txt" "$stamp"
fi
jinja_dir="$(QTRAIN_VENV="$venv" bash "$here/fetch_jinja.sh")"
echo "setup: ok (venv $venv, Jinja engine $jinja_dir)"

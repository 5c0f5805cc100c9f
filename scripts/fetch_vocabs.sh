#!/usr/bin/env bash
# Real tokenizer vocabularies for the tokenizer tests, from PyPI (the only source CI reaches):
# llama-cpp-python's source distribution carries llama.cpp's models/ggml-vocab-*.gguf, the
# Llama 3 and Qwen2 vocabularies with the ids Hugging Face tokenizers gave for their test texts.
# mistral-common's wheel carries Mistral 7B v0.1's SentencePiece model (tokenizer.model.v1, 32000
# pieces, Llama 2 style), copied as mistral-tokenizer.model.v1.
# Prints the directory that holds them; idempotent. Needs the setup venv (pip).
set -euo pipefail
version=0.3.36
venv="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}"
dest="${QTRAIN_CACHE_DIR:-$HOME/.cache/qtrain}/llama-cpp-vocab-$version"
files=(ggml-vocab-llama-bpe.gguf ggml-vocab-llama-bpe.gguf.inp ggml-vocab-llama-bpe.gguf.out
  ggml-vocab-qwen2.gguf ggml-vocab-qwen2.gguf.inp ggml-vocab-qwen2.gguf.out)
have_all() {
  for f in "${files[@]}"; do [[ -s "$dest/$f" ]] || return 1; done
}
if ! have_all; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # Without build isolation pip skips fetching the build backend, but it fails where the venv
  # lacks one; only the isolated retry's errors are worth showing.
  "$venv/bin/python3" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    --no-build-isolation "llama-cpp-python==$version" -d "$tmp" >/dev/null 2>&1 ||
    "$venv/bin/python3" -m pip download -q --disable-pip-version-check --no-deps \
      --no-binary :all: "llama-cpp-python==$version" -d "$tmp" >&2
  members=()
  for f in "${files[@]}"; do
    members+=("llama_cpp_python-$version/vendor/llama.cpp/models/$f")
  done
  tar -xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$tmp" "${members[@]}"
  mkdir -p "$dest"
  for f in "${files[@]}"; do
    cp "$tmp/llama_cpp_python-$version/vendor/llama.cpp/models/$f" "$dest/$f"
  done
fi
mistral_version=1.13.1
mistral_model="$dest/mistral-tokenizer.model.v1"
if [[ ! -s "$mistral_model" ]]; then
  mtmp="$(mktemp -d)"
  trap 'rm -rf "${tmp:-}" "$mtmp"' EXIT
  "$venv/bin/python3" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: \
    "mistral-common==$mistral_version" -d "$mtmp" >&2
  mkdir -p "$dest"
  "$venv/bin/python3" - "$mtmp" "$mistral_model" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/mistral_common-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("mistral_common/data/tokenizer.model.v1") as src:
    with open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  mv "$mistral_model.part" "$mistral_model"
fi
echo "$dest"

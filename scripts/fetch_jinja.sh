#!/usr/bin/env bash
# llama.cpp's Jinja engine (common/jinja/, MIT, with the common/json and common/unicode helpers it
# uses) and its collection of real Hugging Face chat templates (models/templates/*.jinja), from
# llama-cpp-python's source distribution on PyPI (the same sdist fetch_vocabs.sh reads). Nothing
# of it is committed: it lands in ${QTRAIN_CACHE_DIR:-~/.cache/qtrain}/llama-cpp-jinja-VERSION,
# where CMake looks for it (QTRAIN_JINJA_DIR); without it data.template auto keeps the four
# built-in template shapes. Prints the directory; idempotent. Needs the setup venv (pip).
set -euo pipefail
version=0.3.36
venv="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}"
dest="${QTRAIN_CACHE_DIR:-$HOME/.cache/qtrain}/llama-cpp-jinja-$version"
if [[ ! -f "$dest/.complete" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # As in fetch_vocabs.sh: without build isolation pip skips fetching the build backend.
  "$venv/bin/python3" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    --no-build-isolation "llama-cpp-python==$version" -d "$tmp" >/dev/null 2>&1 ||
    "$venv/bin/python3" -m pip download -q --disable-pip-version-check --no-deps \
      --no-binary :all: "llama-cpp-python==$version" -d "$tmp" >&2
  root="llama_cpp_python-$version/vendor/llama.cpp"
  tar -xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$tmp" "$root/LICENSE" "$root/common/jinja" \
    "$root/common/json.h" "$root/common/json.cpp" "$root/common/unicode.h" \
    "$root/common/unicode.cpp" "$root/models/templates"
  rm -rf "$dest.part"
  mkdir -p "$dest.part/templates"
  cp -r "$tmp/$root/common/jinja" "$dest.part/jinja"
  cp "$tmp/$root/common/"{json.h,json.cpp,unicode.h,unicode.cpp} "$tmp/$root/LICENSE" "$dest.part/"
  cp "$tmp/$root/models/templates/"*.jinja "$dest.part/templates/"
  touch "$dest.part/.complete"
  rm -rf "$dest"
  mv "$dest.part" "$dest"
fi
echo "$dest"

#!/usr/bin/env bash
# Here (a Debian machine with apt and network): fetches what the GPU machine lacks to build qtrain
# (it has PyTorch 2.11 with LibTorch, CUDA 13, cmake, ninja and nvcc, but no apt and no network)
# as Debian .debs into .gpu-deps/debs/ (ignored by git). `run` carries the folder:
#   run(command="bash tools/gpu/run_all.sh", carry=[".gpu-deps"])
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dest="$root/.gpu-deps/debs"
# Headers and CMake/pkg-config files, and the shared libraries the binaries load at run time.
packages=(
  libyaml-cpp-dev libyaml-cpp0.7
  libsentencepiece-dev libsentencepiece0
  nlohmann-json3-dev libcli11-dev
  libgtest-dev libgmock-dev googletest
  libbenchmark-dev libbenchmark1debian
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  libutf8proc-dev libutf8proc2
  libgloo-dev
)
mkdir -p "$dest"
cd "$dest"
missing=()
for p in "${packages[@]}"; do
  compgen -G "${p}_*.deb" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get download "${missing[@]}" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
fi
for p in "${packages[@]}"; do
  compgen -G "${p}_*.deb" >/dev/null || { echo "pack_deps: $p was not downloaded" >&2; exit 4; }
done
du -sh "$dest"
ls "$dest"

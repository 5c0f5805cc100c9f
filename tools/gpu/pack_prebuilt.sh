#!/usr/bin/env bash
# Here (no GPU needed): builds what a GPU check runs, for sm_80 and sm_90, and packs it into
# .gpu-prebuilt/ (ignored by git) so that the GPU machine runs it without compiling anything:
#   bin/                 qtrain, qmem, the CUDA benchmarks and every CUDA test binary, stripped
#   lib/                 the shared libraries they load that are neither LibTorch's, CUDA's nor
#                        the C runtime's (yaml-cpp, sentencepiece, pcre2, utf8proc, benchmark)
#   lib-fallback/        this machine's libstdc++ and libgcc_s, for a GPU machine whose own are
#                        older than the binaries need (run_prebuilt.sh decides)
#   python/bitsandbytes  bitsandbytes (the venv's, 0.50.2) trimmed to its Python package and its
#                        CUDA 13.0 library: the reference QLoRA of tools/gpu/hf_peft_bench.py
#   MANIFEST             commit, build settings, what is in it and its size
# Fails when the folder is 60 MiB or more (the device tool carries 64 MiB in all). Then:
#   run(command="bash tools/gpu/run_prebuilt.sh", carry=[".gpu-prebuilt"])
# QTRAIN_GPU_BUILD: the build tree (default build-gpu; configured here on first use).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${QTRAIN_GPU_BUILD:-$root/build-gpu}"
venv="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}"
dest="$root/.gpu-prebuilt"
limit_bytes=$((60 * 1024 * 1024))
# shellcheck source=tools/gpu/cuda_targets.sh
source "$root/tools/gpu/cuda_targets.sh"

if [[ ! -x /usr/local/cuda/bin/nvcc && -z "$(command -v nvcc)" ]]; then
  echo "pack_prebuilt: no nvcc: the CUDA kernels cannot be compiled here" >&2
  exit 4
fi
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DQTRAIN_PYTHON="$venv/bin/python3" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
    -DCMAKE_CUDA_ARCHITECTURES="80;90" >/dev/null
fi
if ! grep -q '\.cu\.o:' "$build/build.ninja"; then
  echo "pack_prebuilt: $build was configured without CUDA" >&2
  exit 4
fi
archs="$(grep '^CMAKE_CUDA_ARCHITECTURES' "$build/CMakeCache.txt" | cut -d= -f2)"
if [[ ";$archs;" != *";90;"* && ";$archs;" != *";90-real;"* ]]; then
  echo "pack_prebuilt: $build compiles CUDA for '$archs', not sm_90 (H100/H200): reconfigure it" \
    "with -DCMAKE_CUDA_ARCHITECTURES='80;90'" >&2
  exit 4
fi
targets=()
for t in "${qtrain_gpu_tools[@]}" "${qtrain_cuda_tests[@]}"; do targets+=("$(basename "$t")"); done
cmake --build "$build" -j "${QTRAIN_JOBS:-$(nproc)}" --target "${targets[@]}"

rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/lib" "$dest/lib-fallback" "$dest/python"
for t in "${qtrain_gpu_tools[@]}" "${qtrain_cuda_tests[@]}"; do
  strip --strip-unneeded -o "$dest/bin/$(basename "$t")" "$build/$t"
done

# Shared libraries: those LibTorch's wheel, the NVIDIA wheels and the C runtime provide are the
# GPU machine's own; everything else travels.
torch_lib="$("$venv/bin/python3" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
site="$(dirname "$torch_lib")"
runtime='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|libgcc_s)\.'
for b in "$dest"/bin/*; do
  ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  [[ "$path" == "$site"/* ]] && continue
  [[ "$name" =~ $runtime ]] && continue
  cp -L "$path" "$dest/lib/$name"
done
for name in libstdc++.so.6 libgcc_s.so.1; do
  cp -L "$(ldd "$dest/bin/qtrain" | awk -v n="$name" '$1 == n {print $3}')" "$dest/lib-fallback/$name"
done
strip --strip-unneeded "$dest"/lib/*.so* "$dest"/lib-fallback/*.so* 2>/dev/null || true

bnb="$("$venv/bin/python3" -c 'import os, bitsandbytes as b; print(os.path.dirname(b.__file__))' 2>/dev/null)"
bnb_version="$("$venv/bin/python3" -c 'import bitsandbytes as b; print(b.__version__)' 2>/dev/null)"
cp -r "$bnb" "$dest/python/bitsandbytes"
find "$dest/python/bitsandbytes" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
cp "$bnb/libbitsandbytes_cuda130.so" "$bnb/libbitsandbytes_cpu.so" "$dest/python/bitsandbytes/"

bytes="$(du -sb "$dest" | cut -f1)"
{
  echo "qtrain commit: $(git -C "$root" rev-parse HEAD)$(git -C "$root" diff --quiet || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%FT%TZ) on $(uname -m), $(ldd --version | head -1)"
  echo "cuda architectures: $archs"
  echo "nvcc: $(/usr/local/cuda/bin/nvcc --version | tail -2 | head -1)"
  echo "torch (linked against): $("$venv/bin/python3" -c 'import torch; print(torch.__version__)')"
  echo "bitsandbytes: $bnb_version (python package + libbitsandbytes_cuda130.so)"
  echo "size: $bytes bytes"
  (cd "$dest" && find . -type f -printf '%s %p\n' | sort -k2)
} >"$dest/MANIFEST"
echo "pack_prebuilt: $dest, $((bytes / 1024 / 1024)) MiB"
if ((bytes >= limit_bytes)); then
  echo "pack_prebuilt: $bytes bytes is over the 60 MiB the device call can carry" >&2
  exit 5
fi

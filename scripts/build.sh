#!/usr/bin/env bash
# Configures and builds qtrain into ${QTRAIN_BUILD:-build} (Ninja, ccache, precompiled headers).
# Release at -O2 without debug info by default: with -g the LibTorch headers make the build tree
# about 6 GB (CI once ran out of disk); QTRAIN_BUILD_TYPE=RelWithDebInfo for a debuggable build.
# QTRAIN_CMAKE_ARGS adds configure options (scripts/test.sh: clang with sanitizers and fuzzing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${QTRAIN_BUILD:-$root/build}"
venv="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}"
jobs="${QTRAIN_JOBS:-$(nproc)}"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DQTRAIN_PYTHON="$venv/bin/python3" \
    -DCMAKE_BUILD_TYPE="${QTRAIN_BUILD_TYPE:-Release}" \
    -DCMAKE_CXX_FLAGS_RELEASE="${QTRAIN_OPT_FLAGS:--O2} -DNDEBUG" ${QTRAIN_CMAKE_ARGS:-}
fi
cmake --build "$build" -j "$jobs"

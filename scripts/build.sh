#!/usr/bin/env bash
# Configures and builds qtrain into ${QTRAIN_BUILD:-build} (Ninja, ccache, precompiled headers).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${QTRAIN_BUILD:-$root/build}"
venv="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}"
jobs="${QTRAIN_JOBS:-$(nproc)}"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DQTRAIN_PYTHON="$venv/bin/python3" \
    -DCMAKE_BUILD_TYPE="${QTRAIN_BUILD_TYPE:-RelWithDebInfo}"
fi
cmake --build "$build" -j "$jobs"

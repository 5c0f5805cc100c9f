#!/usr/bin/env bash
# README's demo command: set up, build, and run the main job on the embedded default:
# `qtrain recipes/tiny_qlora.yaml` on the CPU (a tiny built-in Llama, NF4 base, LoRA adapters,
# the tiny instruction dataset).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
bash "$root/scripts/build.sh"
bin="${QTRAIN_BUILD:-$root/build}/tools"
cd "$root"
# output.overwrite: every demo run starts a fresh run directory (runs/tiny_qlora).
"$bin/qtrain" recipes/tiny_qlora.yaml output.overwrite=true "$@"

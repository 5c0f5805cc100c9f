#!/usr/bin/env bash
# README's demo command: set up, build, write the embedded default model (a tiny random Llama
# with a real sentencepiece tokenizer) and generate from it on the CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
bash "$root/scripts/build.sh"
bin="${QTRAIN_BUILD:-$root/build}/tools"
model="$root/runs/models/tiny-llama"
[[ -f "$model/config.json" ]] || "$bin/qtiny" --arch llama --preset tiny --seed 0 --out "$model"
"$bin/qgen" "$model" --prompt "The license" --max-new-tokens 24

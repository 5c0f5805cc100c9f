#!/usr/bin/env bash
# A training step of the 100m preset (12 layers, 768 wide, 8000-token vocabulary) with an NF4
# base on the CPU, in one run: float32 and bfloat16 compute, at 1 and 2 threads, each a separate
# qtrain process on synthetic weights, 2 rows of 128 tokens per step (packed), LoRA r=8 on every
# linear, gradient checkpointing. Step time: the median of the measured steps in metrics.jsonl.
# Run it with two builds to compare them: QTRAIN (default build/tools/qtrain; e.g. a build
# configured with -DQTRAIN_OPENMP=OFF for "before"), STEPS (default 6, the first is not counted),
# OUT (default out/bench-step-cpu). Prints a markdown table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
qtrain="${QTRAIN:-$root/build/tools/qtrain}"
out="${OUT:-$root/out/bench-step-cpu}"
steps="${STEPS:-6}"
mkdir -p "$out"

model="$out/100m"
if [[ ! -f "$model/config.json" ]]; then
  "$root/build/tools/qtiny" --preset 100m --out "$model" --overwrite >/dev/null
  rm -f "$model"/*.safetensors "$model"/model.safetensors.index.json
fi

run() {  # name dtype threads
  local name="$1" dtype="$2" threads="$3"
  cat >"$out/$name.yaml" <<YAML
model:
  path: $model
  synthetic: true
  dtype: $dtype
  device: cpu
adapter:
  r: 8
  alpha: 16
  dropout: 0.0
  dtype: float32
data:
  path: $root/recipes/data/tiny_instruct.jsonl
  max_seq_len: 128
  packing: true
  eval_fraction: 0
training:
  micro_batch_size: 2
  grad_accum_steps: 1
  max_steps: $steps
  optimizer: adamw
  log_every: 1
output:
  dir: $out/$name
  overwrite: true
  tensorboard: false
YAML
  OMP_NUM_THREADS="$threads" "$qtrain" "$out/$name.yaml" >"$out/$name.log" 2>&1
  python3 - "$out/$name/metrics.jsonl" "$name" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"step_seconds"' in l]
times = [r["step_seconds"] for r in rows[1:]]
print(f"| {sys.argv[2]} | {statistics.median(times):.3f} | {len(times)} |")
PY
}

echo "| variant | s/step (median) | steps |"
echo "|---|---|---|"
for threads in 1 2; do
  for dtype in float32 bfloat16; do run "${dtype}-${threads}t" "$dtype" "$threads"; done
done

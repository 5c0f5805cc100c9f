#!/usr/bin/env bash
# The training step at a 128k vocabulary on the CPU, in one run: the builtin tiny llama's shape
# (6 layers, 128 wide) with Llama 3's 128256-token vocabulary, synthetic NF4 weights, one packed
# 2048-token row per step with loss on every token (data.train_on_inputs), LoRA r=16 on every
# linear. Each variant is a separate qtrain process
# (peak resident set is per process); step time is the median of the measured steps in
# metrics.jsonl, peak RSS the highest peak_memory_bytes there.
#   before:  training.loss_chunk_tokens=0 -- the loss over all of the row's loss tokens at once,
#            [N, 128256] float32 logits and their gradient, as the step before the chunked loss
#   after:   the chunked loss at 1024 and 256 tokens per chunk
# QTRAIN: the qtrain binary (default build/tools/qtrain); STEPS (default 4, the first is not
# counted); OUT (default out/bench-step-128k). Prints a markdown table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
qtrain="${QTRAIN:-$root/build/tools/qtrain}"
out="${OUT:-$root/out/bench-step-128k}"
steps="${STEPS:-4}"
mkdir -p "$out"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"

# A model directory holding only the shape and the tokenizer: builtin:tiny's, vocabulary widened.
model="$out/tiny-128k"
if [[ ! -f "$model/config.json" ]]; then
  "$root/build/tools/qtiny" --preset tiny --out "$model" --overwrite >/dev/null
  python3 - "$model/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["vocab_size"] = 128256
json.dump(config, open(path, "w"), indent=2)
PY
  rm -f "$model"/*.safetensors "$model"/model.safetensors.index.json
fi

run() {  # name chunk
  local name="$1" chunk="$2"
  cat >"$out/$name.yaml" <<YAML
model:
  path: $model
  synthetic: true
  dtype: float32
  device: cpu
adapter:
  r: 16
  alpha: 32
  dropout: 0.05
  dtype: float32
data:
  path: $root/recipes/data/tiny_instruct.jsonl
  max_seq_len: 2048
  packing: true
  train_on_inputs: true
  eval_fraction: 0
training:
  micro_batch_size: 1
  grad_accum_steps: 1
  max_steps: $steps
  optimizer: adamw
  loss_chunk_tokens: $chunk
  log_every: 1
output:
  dir: $out/run-$name
  overwrite: true
  tensorboard: false
YAML
  "$qtrain" "$out/$name.yaml" >"$out/$name.log" 2>&1
  python3 - "$out/run-$name/metrics.jsonl" "$name" "$chunk" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
times = [r["step_seconds"] for r in rows[1:]] or [r["step_seconds"] for r in rows]
peak = max(r["peak_memory_bytes"] for r in rows)
print(f"| {sys.argv[2]} | {sys.argv[3]} | {statistics.median(times):.2f} | {peak / 2**20:.0f} | {rows[-1]['loss']:.4f} |")
PY
}

echo "| variant | loss_chunk_tokens | step s (median) | peak RSS MiB | last loss |"
echo "|---|---|---|---|---|"
run before 0
run after-1024 1024
run after-256 256

#!/usr/bin/env bash
# The training benchmark of issue 8, qtrain against transformers + peft in one call:
#   SIZE=8b   (GPU) Llama-3.1-8B shape, seq 2048, LoRA r=16 on all linear layers, gradient
#             checkpointing, NF4 double-quant base drawn synthetically on the GPU; then the 70B
#             recipe's peak memory at seq 2048 for a few steps (SKIP_70B=1 skips).
#   SIZE=tiny (CPU) the same harness at the built-in tiny shape, seq 256, to check it anywhere.
# The main comparison: qtrain on unpacked full rows (samples longer than max_seq_len, truncated)
# against transformers + bitsandbytes + peft QLoRA (tools/gpu/hf_peft_bench.py --base nf4) on
# rows of random tokens of the same length. Also run: qtrain on packed rows, and the BF16-LoRA
# reference (--base bf16). SKIP_HF=1 skips both references.
# Prints and writes $OUT/results-$SIZE.md, and the raw JSON and log of each part.
# QTRAIN: the qtrain binary (default build/tools/qtrain); QTRAIN_PYTHON: the Python with torch,
# transformers and peft (default the scripts/setup.sh venv if there, else python3); STEPS: measured
# steps (default 12 on 8b, 4 on tiny); PART_TIMEOUT: seconds each part may run (default 150 on 8b,
# 600 on tiny): a part that times out or fails is a row saying so.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${OUT:-$root/out}"
qtrain="${QTRAIN:-$root/build/tools/qtrain}"
venv_python="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}/bin/python3"
[[ -x "$venv_python" ]] || venv_python="$(command -v python3)"
python="${QTRAIN_PYTHON:-$venv_python}"
size="${SIZE:-8b}"
mkdir -p "$out"
case "$size" in
  8b) shape=llama3-8b seq=2048 mb=1 steps="${STEPS:-12}" device=auto dtype=bfloat16 limit=150 ;;
  tiny) shape="" seq=256 mb=2 steps="${STEPS:-4}" device=cpu dtype=float32 limit=600 ;;
  *) echo "bench_train: SIZE is 8b or tiny, not $size" >&2; exit 2 ;;
esac
part_timeout="${PART_TIMEOUT:-$limit}"
warmup=2

failed_json() {  # label rc log -> JSON of a part that timed out or failed
  "$python" - "$1" "$2" "$3" "$part_timeout" <<'PY'
import json, os, sys
label, rc, log, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if rc in (124, 137):
    error = f"timed out after {limit} s"
else:
    lines = [l.strip() for l in open(log, errors="replace")] if os.path.exists(log) else []
    lines = [l for l in lines if l]
    error = f"failed (exit {rc})" + (f": {lines[-1][:200]}" if lines else "")
print(json.dumps({"impl": label, "error": error.replace("|", "/")}))
PY
}

# Alpaca records whose responses are ~4 words per row position: each is longer than max_seq_len
# tokens, so with packing off and overlong: truncate every row is a full max_seq_len row.
long_rows_data() {  # file rows
  "$python" - "$1" "$2" "$seq" <<'PY'
import json, random, sys
path, rows, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
words = ("river stone green paper candle meadow quiet number window garden silver morning "
         "bread yellow thunder pocket orange winter basket mirror ladder forest copper").split()
rng = random.Random(0)
with open(path, "w") as f:
    for _ in range(rows):
        text = " ".join(rng.choice(words) for _ in range(4 * seq))
        f.write(json.dumps({"instruction": "Continue the list of words.", "input": "",
                            "output": text}) + "\n")
PY
}

# qtrain on a synthetic base: the shape from model.known_config, the tokenizer from builtin:tiny.
qtrain_run() {  # name label known_config seq steps packing data
  local name="$1" label="$2" known="$3" seq_len="$4" n="$5" packing="$6" data="$7"
  local recipe="$out/bench-$name.yaml" log="$out/qtrain-$name.log" rc=0
  cat >"$recipe" <<YAML
model:
  path: builtin:tiny
  known_config: ${known}
  synthetic: true
  dtype: ${dtype}
  device: ${device}
quantization:
  type: nf4
  double_quant: true
adapter:
  r: 16
  alpha: 32
  dropout: 0.05
  target_modules: [all-linear]
data:
  path: ${data}
  max_seq_len: ${seq_len}
  packing: ${packing}
  overlong: truncate
  eval_fraction: 0
training:
  micro_batch_size: ${mb}
  grad_accum_steps: 1
  max_steps: ${n}
  optimizer: paged_adamw
  gradient_checkpointing: true
  log_every: 1
output:
  dir: ${out}/run-${name}
  overwrite: true
  tensorboard: false
YAML
  [[ -n "$known" ]] || sed -i '/known_config: $/d' "$recipe"
  timeout -k 10 "$part_timeout" "$qtrain" "$recipe" >"$log" 2>&1 || rc=$?
  if [[ $rc == 0 ]]; then
    summarise "$out/run-$name" "$label" "$seq_len" >"$out/qtrain-$name.json" 2>>"$log" || rc=$?
  fi
  [[ $rc == 0 ]] || { tail -5 "$log"; failed_json "$label" "$rc" "$log" >"$out/qtrain-$name.json"; }
  cat "$out/qtrain-$name.json"
}

summarise() {  # run_dir label seq -> JSON of the steps after warm-up
  "$python" - "$1" "$2" "$warmup" "$mb" "$3" <<'PY'
import json, statistics, sys
run, label = sys.argv[1], sys.argv[2]
warmup, mb, seq = (int(a) for a in sys.argv[3:6])
rows = [json.loads(l) for l in open(run + "/metrics.jsonl")]
steps = [r for r in rows if "step_seconds" in r][warmup:]
seconds = statistics.median(r["step_seconds"] for r in steps)
print(json.dumps({
    "impl": label,
    "step_seconds": seconds,
    "tokens_per_second": mb * seq / seconds,  # row positions, as the reference counts them
    "real_tokens_per_second": statistics.median(r["tokens_per_second"] for r in steps),
    "peak_memory_bytes": max(r["peak_memory_bytes"] for r in steps),
    "last_loss": steps[-1]["loss"],
}))
PY
}

hf_run() {  # base label
  local json="$out/hf-$1-$size.json" log="$out/hf-$1-$size.log" rc=0
  local hf_base="$1"
  [[ "$1" == qlora ]] && hf_base=nf4
  timeout -k 10 "$part_timeout" "$python" "$root/tools/gpu/hf_peft_bench.py" --base "$hf_base" \
    "${hf_args[@]}" >"$json" 2>"$log" || rc=$?
  [[ $rc == 0 ]] || { tail -5 "$log"; failed_json "$2" "$rc" "$log" >"$json"; }
  cat "$json"
}

echo "bench_train: $size (${shape:-builtin tiny} seq $seq, $steps steps after $warmup warm-up," \
  "each part time-boxed at $part_timeout s)"
long_rows_data "$out/long_rows.jsonl" $(((steps + warmup) * mb + 8))
echo "bench_train: qtrain, unpacked full rows"
qtrain_run "unpacked-$size" "qtrain (unpacked)" "$shape" "$seq" $((steps + warmup)) false \
  "$out/long_rows.jsonl"
echo "bench_train: qtrain, packed rows"
qtrain_run "packed-$size" "qtrain (packed)" "$shape" "$seq" $((steps + warmup)) true \
  "$root/recipes/data/tiny_instruct.jsonl"

if [[ "${SKIP_HF:-0}" != 1 ]]; then
  hf_args=(--seq "$seq" --micro-batch "$mb" --steps "$steps" --warmup "$warmup" --r 16)
  if [[ -n "$shape" ]]; then
    hf_args+=(--shape "$shape")
  else
    tiny_dir="$(cat "$out"/qtrain-{unpacked,packed}-"$size".log |
      grep -o '/[^ ]*builtin-tiny-llama-seed0' | head -1 || true)"
    hf_args+=(--config-json "$tiny_dir/config.json")
  fi
  echo "bench_train: transformers + bitsandbytes + peft, QLoRA (NF4 base)"
  hf_run qlora "transformers+bnb+peft qlora"
  echo "bench_train: transformers + peft, BF16 LoRA"
  hf_run bf16 "transformers+peft bf16-lora"
fi

if [[ "$size" == 8b && "${SKIP_70B:-0}" != 1 ]]; then
  echo "bench_train: 70B recipe shape, peak memory at seq 2048"
  qtrain_run 70b "qtrain 70B" llama3-70b 2048 4 true "$root/recipes/data/tiny_instruct.jsonl"
  # The 48 GB layout at 8k (recipes/llama70b_qlora_48gb.yaml) on a synthetic base: its measured
  # peak against qmem's 42.8 GiB (caching allocator peak; managed memory is not in it).
  echo "bench_train: recipes/llama70b_qlora_48gb.yaml, peak memory at seq 8192"
  timeout -k 10 "$part_timeout" "$qtrain" "$root/recipes/llama70b_qlora_48gb.yaml" \
    model.path=builtin:tiny model.synthetic=true \
    data.path="$root/recipes/data/tiny_instruct.jsonl" data.eval_fraction=0 training.max_steps=4 \
    training.eval_every=0 output.dir="$out/run-70b-48gb" output.overwrite=true \
    output.tensorboard=false >"$out/qtrain-70b-48gb.log" 2>&1 &&
    summarise "$out/run-70b-48gb" "qtrain 70B 48 GB" 8192 | tee "$out/qtrain-70b-48gb.json" ||
    tail -20 "$out/qtrain-70b-48gb.log"
fi

"$python" - "$out" "$size" <<'PY'
import json, os, sys
out, size = sys.argv[1], sys.argv[2]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
unpacked, packed = load(f"qtrain-unpacked-{size}.json"), load(f"qtrain-packed-{size}.json")
qlora, bf16 = load(f"hf-qlora-{size}.json"), load(f"hf-bf16-{size}.json")
q70 = load("qtrain-70b.json")
ref = next((r for r in (qlora, bf16) if r and "matmul_params" in r), None)
if ref:
    # Frozen base: forward + input-gradient backward (4N) and causal attention (half of 12 L d T);
    # the hardware count adds gradient checkpointing's recomputed forward.
    n, attn = ref["matmul_params"], ref["layers"] * ref["hidden"] * ref["seq"]
    model_flops, hw_flops = 4 * n + 6 * attn, 6 * n + 8 * attn
    peak = ref["matmul_peak_flops"]
def gib(b): return "-" if b is None else f"{b / 2**30:.2f} GiB"
def ok(r): return r is not None and "error" not in r
lines = [f"# Training benchmark ({size})", "",
         "| implementation | step s | tokens/s | peak memory | model MFU | hardware MFU |",
         "|---|---|---|---|---|---|"]
for label, r in (("qtrain (unpacked)", unpacked), ("qtrain (packed)", packed),
                 ("transformers+bnb+peft QLoRA", qlora), ("transformers+peft BF16 LoRA", bf16)):
    if r is None:
        lines.append(f"| {label} | not run | | | | |")
    elif "error" in r:
        lines.append(f"| {label} | {r['error']} | | | | |")
    else:
        tps = r["tokens_per_second"]
        mfu = [f"{f * tps / peak:.1%}" for f in (model_flops, hw_flops)] if ref else ["-", "-"]
        lines.append(f"| {label} | {r['step_seconds']:.3f} | {tps:.0f} | "
                     f"{gib(r['peak_memory_bytes'])} | {mfu[0]} | {mfu[1]} |")
def verdict(met): return "met" if met else "not met"
def ratios(other, name, speed_target=None, memory_target=None):
    if not (ok(unpacked) and ok(other)): return
    speed = unpacked["tokens_per_second"] / other["tokens_per_second"]
    text = f"qtrain (unpacked) / {name}: {speed:.2f}x tokens/s"
    if speed_target:
        text += f" (target >= {speed_target}x: {verdict(speed >= speed_target)})"
    if unpacked["peak_memory_bytes"] and other["peak_memory_bytes"]:
        memory = unpacked["peak_memory_bytes"] / other["peak_memory_bytes"]
        text += f", {memory:.2f}x peak memory"
        if memory_target:
            text += f" (target <= {memory_target}x: {verdict(memory <= memory_target)})"
    else:
        text += ", peak memory not compared (no device peak on this side)"
    lines.append(text)
lines.append("")
ratios(qlora, "transformers+bnb+peft QLoRA", 1.3, 0.7)
ratios(bf16, "transformers+peft BF16 LoRA")
if ref:
    lines.append(f"FLOPs per token: model {model_flops / 1e9:.3f} G, hardware"
                 f" {hw_flops / 1e9:.3f} G"
                 f" (N = {n / 1e9:.3f} G matmul params, {ref['layers']} layers, hidden"
                 f" {ref['hidden']}, seq {ref['seq']}); measured matmul peak"
                 f" {peak / 1e12:.1f} TFLOP/s ({ref['device']})")
for r in (qlora, bf16):
    if ok(r): lines.append(f"{r['impl']}: optimizer {r['optimizer']}")
lines.append("tokens/s counts row positions; packed rows hold several samples, so their attention "
             "does less than the full-row count above")
if q70:
    lines.append("")
    lines.append("70B recipe at seq 2048: " + (q70["error"] if "error" in q70 else
                 f"peak {gib(q70['peak_memory_bytes'])}, step {q70['step_seconds']:.2f} s"))
text = "\n".join(lines) + "\n"
open(os.path.join(out, f"results-{size}.md"), "w").write(text)
print(text)
PY

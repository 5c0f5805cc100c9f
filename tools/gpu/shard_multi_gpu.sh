#!/usr/bin/env bash
# distributed.strategy shard on NCCL, for a machine with 2 or more GPUs (the single-GPU device
# sessions cannot run it: each rank needs its own GPU). After tools/gpu/run_all.sh has built qtrain
# in $QTRAIN_BUILD:
#   bash tools/gpu/shard_multi_gpu.sh
# trains the builtin micro model on cuda for 6 steps three ways - one process with 2 accumulation
# steps, ddp over 2 GPUs, shard over 2 GPUs - and checks that the losses agree (1e-3: bf16
# compute, NCCL's reduction order) and that shard's log reports half the projections read and
# quantized per rank, half the quantized bytes resident, and gathered bytes = whole x 1/2 x 3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${OUT:-$root/out}/shard_multi_gpu"
build="${QTRAIN_BUILD:-$root/build-gpu}"
mkdir -p "$out"
device="${DEVICE:-cuda}"  # DEVICE=cpu runs the same check on Gloo (a dry run of this script)
gpus=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true) | wc -l)
if [ "$device" = cuda ] && [ "$gpus" -lt 2 ]; then
  echo "shard_multi_gpu: $gpus GPU(s); this check needs 2 or more" >&2
  exit 2
fi
qtrain="$build/tools/qtrain"
args=(recipes/tiny_qlora.yaml model.path=builtin:micro model.device=$device training.max_steps=6
  training.micro_batch_size=4 training.warmup_steps=0 adapter.dropout=0 output.save_every=0 output.overwrite=true)
"$qtrain" "${args[@]}" output.dir="$out/one" training.grad_accum_steps=2 >"$out/one.log" 2>&1
"$qtrain" "${args[@]}" output.dir="$out/ddp" --nproc 2 >"$out/ddp.log" 2>&1
"$qtrain" "${args[@]}" output.dir="$out/shard" distributed.strategy=shard --nproc 2 \
  >"$out/shard.log" 2>&1
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def rows(run, key):
    return [r for r in map(json.loads, open(f"{out}/{run}/metrics.jsonl")) if key in r]
loss = {run: [r["loss"] for r in rows(run, "loss")] for run in ("one", "ddp", "shard")}
ok = all(abs(a - b) < 1e-3 and abs(a - c) < 1e-3 for a, b, c in zip(*loss.values()))
print("losses", json.dumps(loss), "agree" if ok else "DIFFER")
row = rows("shard", "gathered_bytes")[0]
print("per step:", {k: row[k] for k in ("gathered_bytes", "peak_gathered_bytes",
                                        "resident_base_bytes_per_rank")})
sys.exit(0 if ok else 1)
PY
grep -h "decoder projections split over" "$out/shard.log"

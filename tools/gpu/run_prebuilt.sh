#!/usr/bin/env bash
# On the GPU machine, with the folder tools/gpu/pack_prebuilt.sh made here carried along:
#   run(command="bash tools/gpu/run_prebuilt.sh", carry=[".gpu-prebuilt"], timeout_s=540)
# No compiler runs there: LibTorch is the machine's own python3 torch 2.11 (cu130), found through
# LD_LIBRARY_PATH. A preflight (GPU, torch version, every packed binary's libraries resolved,
# bitsandbytes on the GPU) fails fast with exit 4; then the parts, each time-boxed so the whole
# call ends by DEADLINE_S (default 470 s) and a part that overruns is cut and reported:
#   tests    every CUDA test binary, QTRAIN_SYNC_CHECK=error
#   dequant  NF4 dequantize GB/s against a device copy (bench_quant_cuda)
#   train    tools/gpu/bench_train.sh SIZE=8b: qtrain against transformers + bitsandbytes + peft
#            QLoRA and against BF16 LoRA at the Llama-3.1-8B shape, then the 70B recipes' peaks
#   profile  one step of the benchmark's unpacked qtrain recipe under the Kineto profiler
#            (QTRAIN_PROFILE_STEP): CUDA kernels and operators ranked by time
# PARTS (default "tests dequant profile train") picks parts. DRY_RUN=1 runs the same script on a machine
# without a GPU (here): the GPU checks of the preflight are reported instead of fatal, the CUDA
# cases skip, and the training benchmark runs its tiny CPU shape. Everything lands in $OUT/results (default
# out/results): summary.md, gpu.txt, MANIFEST, run.log and each part's logs; a session copies it
# to tools/gpu/results/<date>-<gpu>/ (tools/gpu/keep_results.sh) and commits it.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pack="${QTRAIN_PREBUILT:-$root/.gpu-prebuilt}"
out="${OUT:-$root/out}"
results="$out/results"
deadline=$((SECONDS + ${DEADLINE_S:-470}))
parts=" ${PARTS:-tests dequant profile train} "
dry_run="${DRY_RUN:-0}"
python="${QTRAIN_PYTHON:-$(command -v python3)}"
mkdir -p "$results"
exec > >(tee -a "$results/run.log") 2>&1
stamp() { echo "== $(date +%T) [$((deadline - SECONDS)) s left] $*"; }
fail() {
  echo "run_prebuilt: preflight: $*" >&2
  echo "preflight failed: $*" >>"$results/summary.md"
  exit 4
}
left() { echo $((deadline - SECONDS)); }
budget() { # wanted seconds -> what the deadline still allows (0: skip)
  local l
  l="$(left)"
  ((l > $1)) && echo "$1" || echo $((l > 10 ? l - 5 : 0))
}

stamp "preflight"
[[ -d "$pack/bin" ]] || fail "no $pack/bin: run tools/gpu/pack_prebuilt.sh on the build machine and carry .gpu-prebuilt"
gpu_fail() { if [[ "$dry_run" == 1 ]]; then echo "preflight (dry run): $*"; else fail "$*"; fi; }
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader \
    >"$results/gpu.txt" || gpu_fail "nvidia-smi cannot query the GPU"
else
  echo "no GPU (dry run)" >"$results/gpu.txt"
  gpu_fail "no nvidia-smi on PATH"
fi
torch_info="$("$python" -c 'import os, torch
print(torch.__version__, torch.version.cuda, os.path.dirname(torch.__file__), torch.cuda.is_available())')" ||
  fail "$python cannot import torch"
read -r torch_version torch_cuda torch_dir cuda_ok <<<"$torch_info"
echo "torch $torch_version cuda $torch_cuda ($torch_dir)" | tee -a "$results/gpu.txt"
cat "$results/gpu.txt"
[[ "$torch_version" == 2.11.* ]] || fail "torch $torch_version here; the binaries link LibTorch 2.11"
[[ "$torch_cuda" == 13.* ]] || fail "torch built for CUDA $torch_cuda; the binaries need the CUDA 13 runtime"
[[ "$cuda_ok" == True ]] || gpu_fail "torch.cuda.is_available() is False"
nvidia_dirs="$(find "$(dirname "$torch_dir")/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')"
export LD_LIBRARY_PATH="$pack/lib:$torch_dir/lib:$nvidia_dirs${LD_LIBRARY_PATH:-}"
unresolved() {
  local b
  for b in "$pack"/bin/*; do
    ldd "$b" 2>&1 | grep -E "not found" | sed "s|^[[:space:]]*|$(basename "$b"): |"
  done
}
problems="$(unresolved)"
if grep -qE "GLIBCXX|CXXABI|GCC_|libstdc\+\+|libgcc_s" <<<"$problems"; then
  echo "preflight: this system's libstdc++ is older than the build's; using the packed one"
  export LD_LIBRARY_PATH="$pack/lib-fallback:$LD_LIBRARY_PATH"
  problems="$(unresolved)"
fi
[[ -z "$problems" ]] || {
  echo "$problems" | head -20
  fail "shared libraries not resolved (listed above; GLIBC_ ones mean this system's C library is older than the build machine's)"
}
"$pack/bin/qtrain" --help >"$results/qtrain-version.txt" 2>&1 || fail "qtrain does not start: $(cat "$results/qtrain-version.txt")"
cp "$pack/MANIFEST" "$results/MANIFEST"
export PYTHONPATH="$pack/python${PYTHONPATH:+:$PYTHONPATH}"
if "$python" -c 'import torch, bitsandbytes as bnb
x = torch.randn(256, 256, device="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)
q, state = bnb.functional.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
y = bnb.functional.dequantize_4bit(q, state)
assert (y - x).abs().max().item() < 0.5, "bitsandbytes NF4 round trip is off"
print("bitsandbytes", bnb.__version__, "NF4 on", x.device)' >"$results/bnb-check.txt" 2>&1; then
  cat "$results/bnb-check.txt"
else
  tail -5 "$results/bnb-check.txt"
  echo "preflight: bitsandbytes does not run here: the QLoRA reference will be missing"
fi
{
  echo "# GPU run $(date -u +%FT%TZ)"
  echo
  echo "GPU: $(head -1 "$results/gpu.txt")  "
  echo "torch $torch_version (CUDA $torch_cuda); $(head -1 "$results/MANIFEST")"
  echo
} >"$results/summary.md"

status=0
if [[ "$parts" == *" tests "* ]]; then
  stamp "CUDA tests"
  echo "## CUDA tests" >>"$results/summary.md"
  # shellcheck source=tools/gpu/cuda_targets.sh
  source "$root/tools/gpu/cuda_targets.sh"
  for t in "${qtrain_cuda_tests[@]}"; do
    name="$(basename "$t")"
    seconds="$(budget 60)"
    if ((seconds == 0)); then
      echo "- $name: not run (deadline)" >>"$results/summary.md"
      continue
    fi
    # The tests find their fixtures (recipes, data) from the source tree.
    (cd "$root" && QTRAIN_SYNC_CHECK=error timeout "$seconds" "$pack/bin/$name" \
      --gtest_output="xml:$results/$name.xml" >"$results/$name.log" 2>&1)
    rc=$?
    verdict="$(grep -E '^\[  (PASSED|SKIPPED|FAILED) +\] [0-9]+ tests?' "$results/$name.log" |
      sed 's/, listed below://' | tr -s ' [' ' ' | tr -d ']' | tr '\n' ';')"
    failed="$(grep -E '^\[  FAILED  \] [A-Za-z]' "$results/$name.log" | awk '{print $4}' | sort -u | tr '\n' ' ')"
    [[ -n "$failed" ]] && verdict="$verdict failed: $failed"
    ((rc == 124)) && verdict="timed out after $seconds s"
    ((rc == 0)) || status=1
    echo "- $name: exit $rc $verdict" >>"$results/summary.md"
    echo "$name: exit $rc $verdict"
  done
fi

if [[ "$parts" == *" dequant "* ]]; then
  stamp "NF4 dequantize vs device copy"
  seconds="$(budget 45)"
  if ((seconds > 0)); then
    timeout "$seconds" "$pack/bin/bench_quant_cuda" --benchmark_repetitions=3 \
      --benchmark_report_aggregates_only=true --benchmark_out="$results/bench_dequant.json" \
      --benchmark_out_format=json >"$results/bench_dequant.log" 2>&1 || status=1
    tail -12 "$results/bench_dequant.log"
    { echo; echo "## NF4 dequantize (bench_quant_cuda, medians)"; echo; echo '```'
      grep -E "_median" "$results/bench_dequant.log" || tail -5 "$results/bench_dequant.log"
      echo '```'; } >>"$results/summary.md"
  fi
fi

if [[ "$parts" == *" train "* ]]; then
  stamp "training benchmark"
  reserve=0
  [[ "$parts" == *" profile "* ]] && reserve=75  # the profiled step after it
  seconds=$(($(left) - reserve - 5))
  if ((seconds > 30)); then
    size=8b
    [[ "$dry_run" == 1 ]] && size=tiny
    # Six parts (qtrain unpacked and packed, the QLoRA and BF16 references, two 70B peaks) share
    # what is left, so a slow one is cut and reported instead of the call being killed.
    part_timeout="${PART_TIMEOUT:-$(((seconds - 15) / 6))}"
    QTRAIN="$pack/bin/qtrain" SIZE="$size" OUT="$results/train" QTRAIN_PYTHON="$python" \
      PART_TIMEOUT="$part_timeout" \
      timeout "$seconds" bash "$root/tools/gpu/bench_train.sh" || status=1
    { echo; cat "$results/train/results-$size.md" 2>/dev/null || echo "training benchmark: no results table (see run.log)"; } >>"$results/summary.md"
  fi
fi
if [[ "$parts" == *" profile "* ]]; then
  stamp "kernel summary of one qtrain step"
  size=8b
  [[ "$dry_run" == 1 ]] && size=tiny
  recipe="$results/train/bench-unpacked-$size.yaml"
  seconds="$(budget 90)"
  if [[ -f "$recipe" ]] && ((seconds > 20)); then
    QTRAIN_PROFILE_STEP=3 timeout "$seconds" "$pack/bin/qtrain" "$recipe" training.max_steps=3 \
      output.dir="$results/profile" output.overwrite=true >"$results/profile.log" 2>&1 || status=1
    { echo; echo "## One qtrain step, profiled (top of profile-step-3.txt)"; echo; echo '```'
      head -45 "$results/profile/profile-step-3.txt" 2>/dev/null || tail -5 "$results/profile.log"
      echo '```'; } >>"$results/summary.md"
    rm -f "$results/profile/profile-step-3.trace.json"  # tens of MB: too big to bring back
  else
    echo "profile: skipped (no $recipe yet or no time left)" | tee -a "$results/summary.md"
  fi
fi
stamp "done (status $status)"
cat "$results/summary.md"
exit "$status"

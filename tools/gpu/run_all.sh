#!/usr/bin/env bash
# On the GPU machine, in one call (device tool; carry .gpu-deps from tools/gpu/pack_deps.sh):
#   bash tools/gpu/run_all.sh
# unpacks the Debian dependencies, configures qtrain against the machine's PyTorch (LibTorch
# cu130) for sm_90, builds the CUDA tests, qtrain and the benchmarks, runs the CUDA tests, then
# the benchmark (tools/gpu/bench_train.sh) and the NF4 dequantize bandwidth. Logs and the results
# table go to $OUT (default ./out). STEPS / SKIP_HF / SKIP_70B tune the benchmark.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${OUT:-$root/out}"
mkdir -p "$out"
build="${QTRAIN_BUILD:-$root/build-gpu}"
exec > >(tee -a "$out/run_all.log") 2>&1
# shellcheck source=tools/gpu/deps_env.sh
source "$root/tools/gpu/deps_env.sh" || exit 4
python="${QTRAIN_PYTHON:-$(command -v python3)}"
stamp() { echo "== $(date +%T) $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' |
  tee -a "$out/gpu.txt"
nproc

stamp "configure"
cmake -S "$root" -B "$build" -G Ninja -DQTRAIN_PYTHON="$python" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90 >"$out/configure.log" 2>&1 || {
  tail -40 "$out/configure.log"
  exit 5
}
stamp "build"
# shellcheck source=tools/gpu/cuda_targets.sh
source "$root/tools/gpu/cuda_targets.sh"
cuda_tests=("${qtrain_cuda_tests[@]}")
targets=()
for t in "${qtrain_gpu_tools[@]}" "${cuda_tests[@]}"; do targets+=("$(basename "$t")"); done
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" >"$out/build.log" 2>&1 || {
  grep -E "error|Error" -A3 "$out/build.log" | head -60
  exit 6
}

stamp "CUDA tests"
status=0
# QTRAIN_SYNC_CHECK=error: a synchronising call inside the micro-batch loop fails the run.
for t in "${cuda_tests[@]}"; do
  QTRAIN_SYNC_CHECK=error "$build/$t" --gtest_output="xml:$out/$(basename "$t").xml" >"$out/$(basename "$t").log" 2>&1 ||
    status=1
  tail -3 "$out/$(basename "$t").log"
done

stamp "NF4 dequantize vs device copy"
"$build/tools/bench/bench_quant_cuda" --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_out="$out/bench_dequant.json" \
  --benchmark_out_format=json >"$out/bench_dequant.log" 2>&1 || status=1
tail -12 "$out/bench_dequant.log"

stamp "training benchmark"
QTRAIN="$build/tools/qtrain" SIZE="${SIZE:-8b}" bash "$root/tools/gpu/bench_train.sh" || status=1
stamp "done (status $status)"
exit "$status"

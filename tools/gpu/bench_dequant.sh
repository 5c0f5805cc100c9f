#!/usr/bin/env bash
# On the GPU machine: builds bench_quant_cuda and the CUDA kernel test, checks CUDA against the
# CPU reference, then measures NF4 dequantize -> BF16 against a device-to-device copy
# (4096x4096 and 8192x28672). Results go to ${OUT:-.}/bench_dequant.json as well.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${QTRAIN_BUILD:-$root/build}"
out="${OUT:-.}"
venv="${QTRAIN_VENV:-$HOME/.cache/qtrain/venv}"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DQTRAIN_PYTHON="$venv/bin/python3" \
    -DCMAKE_BUILD_TYPE="${QTRAIN_BUILD_TYPE:-RelWithDebInfo}"
fi
cmake --build "$build" --target bench_quant_cuda test_quant_cuda
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader || true
"$build/tests/quant/test_quant_cuda"
"$build/tools/bench/bench_quant_cuda" --benchmark_repetitions="${REPS:-5}" \
  --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/bench_dequant.json" --benchmark_out_format=json "$@"

// NF4 dequantize to BF16 on the GPU against the speed limit of the memory: a device-to-device
// copy of the same BF16 output bytes, timed with CUDA events in the same iterations.
//
//   dequant_GBps  (packed + absmax read + BF16 written) / time
//   copy_GBps     (BF16 read + BF16 written) / time of the copy
//   of_copy       dequant_GBps / copy_GBps, the fraction of copy bandwidth reached
//   time_vs_copy  copy time / dequant time (dequantize moves ~0.63x the copy's bytes, so a
//                 bandwidth-bound kernel approaches 1.6)
//
//   build/tools/bench/bench_quant_cuda        (tools/gpu/bench_dequant.sh runs it)
// Without a CUDA device it prints a note and exits 0.
#include "quant/blockwise.h"
#include "quant/codebooks.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <benchmark/benchmark.h>

#include <cstdio>

namespace qtrain {
namespace {

constexpr int kLaunchesPerIteration = 10;
constexpr int64_t kBlocksize = 64;

void BM_NF4DequantizeToBF16(benchmark::State& state) {
  const int64_t rows = state.range(0);
  const int64_t cols = state.range(1);
  const int64_t n = rows * cols;
  const at::Device gpu(at::kCUDA, 0);
  at::manual_seed(0);
  const at::Tensor weight = (at::randn({rows, cols}, at::device(gpu)) * 0.02).to(at::kBFloat16);
  auto [packed, absmax] = quantize_4bit(weight, QuantType::kNF4, kBlocksize);
  const at::Tensor code = nf4_code().to(gpu);
  at::Tensor copy_src = at::empty({n}, at::device(gpu).dtype(at::kBFloat16));
  at::Tensor copy_dst = at::empty_like(copy_src);
  copy_src.fill_(1.0);

  at::cuda::CUDAEvent start(cudaEventDefault);
  at::cuda::CUDAEvent middle(cudaEventDefault);
  at::cuda::CUDAEvent stop(cudaEventDefault);
  const at::cuda::CUDAStream stream = at::cuda::getCurrentCUDAStream();
  double dequant_seconds = 0;
  double copy_seconds = 0;
  for (auto _ : state) {
    start.record(stream);
    for (int k = 0; k < kLaunchesPerIteration; ++k) {
      benchmark::DoNotOptimize(dequantize_4bit(packed, absmax, code, n, kBlocksize, at::kBFloat16));
    }
    middle.record(stream);
    for (int k = 0; k < kLaunchesPerIteration; ++k) copy_dst.copy_(copy_src);
    stop.record(stream);
    stop.synchronize();
    const double dequant = start.elapsed_time(middle) / 1e3 / kLaunchesPerIteration;
    dequant_seconds += dequant;
    copy_seconds += middle.elapsed_time(stop) / 1e3 / kLaunchesPerIteration;
    state.SetIterationTime(dequant);
  }
  const double out_bytes = static_cast<double>(n) * 2;
  const double dequant_bytes = out_bytes + static_cast<double>(packed.numel()) + absmax.numel() * 4;
  const double iterations = static_cast<double>(state.iterations());
  const double dequant_gbps = dequant_bytes * iterations / dequant_seconds / 1e9;
  const double copy_gbps = 2 * out_bytes * iterations / copy_seconds / 1e9;
  state.counters["dequant_GBps"] = dequant_gbps;
  state.counters["copy_GBps"] = copy_gbps;
  state.counters["of_copy"] = dequant_gbps / copy_gbps;
  state.counters["time_vs_copy"] = copy_seconds / dequant_seconds;
}

BENCHMARK(BM_NF4DequantizeToBF16)
    ->Args({4096, 4096})
    ->Args({8192, 28672})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace qtrain

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (!at::hasCUDA()) {
    std::printf("bench_quant_cuda: no CUDA device, nothing to measure\n");
    return 0;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

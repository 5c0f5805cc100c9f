// CPU NF4 throughput on a 4096x4096 BF16 weight, in GB/s of BF16 processed (read by quantize,
// written by dequantize), next to std::memcpy of the same 32 MiB for scale.
//
//   build/tools/bench/bench_quant [--benchmark_filter=...]
#include "quant/blockwise.h"
#include "quant/codebooks.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cstring>

namespace qtrain {
namespace {

constexpr int64_t kRows = 4096;
constexpr int64_t kCols = 4096;
constexpr int64_t kBf16Bytes = kRows * kCols * 2;

at::Tensor weight() {
  at::manual_seed(0);
  return (at::randn({kRows, kCols}) * 0.02).to(at::kBFloat16);
}

void BM_NF4Quantize(benchmark::State& state) {
  const at::Tensor w = weight();
  for (auto _ : state) benchmark::DoNotOptimize(quantize_4bit(w, QuantType::kNF4, 64));
  state.SetBytesProcessed(state.iterations() * kBf16Bytes);
  state.counters["threads"] = at::get_num_threads();
}

void BM_NF4DequantizeToBF16(benchmark::State& state) {
  auto [packed, absmax] = quantize_4bit(weight(), QuantType::kNF4, 64);
  const at::Tensor code = nf4_code();
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        dequantize_4bit(packed, absmax, code, kRows * kCols, 64, at::kBFloat16));
  }
  state.SetBytesProcessed(state.iterations() * kBf16Bytes);
  state.counters["threads"] = at::get_num_threads();
}

void BM_Memcpy(benchmark::State& state) {
  const at::Tensor src = weight();
  at::Tensor dst = at::empty_like(src);
  for (auto _ : state) {
    std::memcpy(dst.data_ptr(), src.data_ptr(), kBf16Bytes);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kBf16Bytes);
}

BENCHMARK(BM_NF4Quantize)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_NF4DequantizeToBF16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Memcpy)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace qtrain

BENCHMARK_MAIN();

// CPU NF4 (and FP4, INT8 quantize) throughput on a 4096x4096 weight at 1 and 2 threads
// (at::set_num_threads), next to a memcpy of the same bytes for scale. Convention: GB/s (10^9
// bytes/s, Google Benchmark's "G" is 2^30) of the dense tensor, i.e. bytes of output written by
// dequantize (2 per element for bf16/fp16, 4 for float32) and bytes of BF16 input read by quantize.
// Dequantize runs once per path: the scalar reference and each vectorized kernel the CPU has
// (blockwise_cpu.h).
//
//   build/tools/bench/bench_quant [--benchmark_filter=...]
//
// The arguments of each benchmark: threads, then (quantize, dequantize) the path 1 scalar, 2 avx2,
// 3 avx512, then (dequantize) the output dtype 0 bf16, 1 fp16, 2 float32, and 0 fresh / 1 reused
// output.
#include "quant/blockwise.h"
#include "quant/blockwise_cpu.h"
#include "quant/codebooks.h"
#include "quant/quantized_tensor.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cstring>
#include <string>
#include <vector>

namespace qtrain {
namespace {

constexpr int64_t kRows = 4096;
constexpr int64_t kCols = 4096;
constexpr int64_t kElements = kRows * kCols;
constexpr int64_t kBlocksize = 64;

const at::ScalarType kDtypes[] = {at::kBFloat16, at::kHalf, at::kFloat};

at::Tensor weight() {
  at::manual_seed(0);
  return (at::randn({kRows, kCols}) * 0.02).to(at::kBFloat16);
}

void set_threads(benchmark::State& state) {
  at::set_num_threads(static_cast<int>(state.range(0)));
  state.counters["threads"] = at::get_num_threads();
}

void report(benchmark::State& state, int64_t bytes_per_iteration) {
  state.SetBytesProcessed(state.iterations() * bytes_per_iteration);
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(bytes_per_iteration),
                                              benchmark::Counter::kIsIterationInvariantRate);
}

// Sets the path of arg 1 (1 scalar, 2 avx2, 3 avx512) and labels the run; false (and the run
// skipped) when this CPU lacks it.
bool force_path(benchmark::State& state, const std::string& what) {
  const auto path = static_cast<cpu::SimdPath>(state.range(1));
  if (!cpu::simd_path_supported(path)) {
    state.SkipWithError("this CPU lacks the path");
    return false;
  }
  cpu::set_simd_path(path);
  state.SetLabel(std::string(cpu::simd_path_name(path)) + " " + what);
  return true;
}

// A fresh (packed, absmax) per call, as quantize_4bit returns; BF16 input.
void BM_NF4Quantize(benchmark::State& state) {
  set_threads(state);
  if (!force_path(state, "nf4")) return;
  const at::Tensor w = weight();
  for (auto _ : state) benchmark::DoNotOptimize(quantize_4bit(w, QuantType::kNF4, kBlocksize));
  cpu::set_simd_path(cpu::SimdPath::kAuto);
  report(state, kElements * 2);
}

void BM_FP4Quantize(benchmark::State& state) {
  set_threads(state);
  if (!force_path(state, "fp4")) return;
  const at::Tensor w = weight();
  for (auto _ : state) benchmark::DoNotOptimize(quantize_4bit(w, QuantType::kFP4, kBlocksize));
  cpu::set_simd_path(cpu::SimdPath::kAuto);
  report(state, kElements * 2);
}

void BM_Int8Quantize(benchmark::State& state) {
  set_threads(state);
  if (!force_path(state, "int8")) return;
  const at::Tensor w = weight();
  for (auto _ : state) benchmark::DoNotOptimize(quantize_int8(w, kBlocksize));
  cpu::set_simd_path(cpu::SimdPath::kAuto);
  report(state, kElements * 2);
}

// Into a fresh output each call (arg 3 = 0: what dequantize_4bit does, the page faults of a new
// allocation included) or into one reused output (arg 3 = 1: the kernel alone).
void BM_NF4Dequantize(benchmark::State& state) {
  set_threads(state);
  const auto path = static_cast<cpu::SimdPath>(state.range(1));
  const at::ScalarType dtype = kDtypes[state.range(2)];
  const bool reuse = state.range(3) == 1;
  if (!cpu::simd_path_supported(path)) {
    state.SkipWithError("this CPU lacks the path");
    return;
  }
  cpu::set_simd_path(path);
  state.SetLabel(std::string(cpu::simd_path_name(path)) + " " + c10::toString(dtype) +
                 (reuse ? " reused output" : " fresh output"));
  auto [packed, absmax] = quantize_4bit(weight(), QuantType::kNF4, kBlocksize);
  const at::Tensor code = nf4_code();
  at::Tensor out = at::empty({kElements}, dtype);
  for (auto _ : state) {
    if (reuse) {
      cpu::dequantize_4bit_into(packed, absmax, code, kElements, kBlocksize, out);
      benchmark::ClobberMemory();
    } else {
      benchmark::DoNotOptimize(dequantize_4bit(packed, absmax, code, kElements, kBlocksize, dtype));
    }
  }
  cpu::set_simd_path(cpu::SimdPath::kAuto);
  report(state, kElements * static_cast<int64_t>(c10::elementSize(dtype)));
}

// A fresh output written once (at::empty, then zero_): the floor under any dequantize that
// returns a new tensor (arg 1: dtype).
void BM_FreshOutputWrite(benchmark::State& state) {
  set_threads(state);
  const at::ScalarType dtype = kDtypes[state.range(1)];
  state.SetLabel(c10::toString(dtype));
  for (auto _ : state) benchmark::DoNotOptimize(at::empty({kElements}, dtype).zero_());
  report(state, kElements * static_cast<int64_t>(c10::elementSize(dtype)));
}

// A double-quantized weight's dequantize(): the decoded absmax from the weight's cache (arg 1 =
// 1) or decoded on every call as before the cache (arg 1 = 0). bf16 output, default path.
void BM_NF4DoubleQuantDequantize(benchmark::State& state) {
  set_threads(state);
  const bool cached = state.range(1) == 1;
  state.SetLabel(cached ? "cached absmax" : "absmax decoded each call");
  const QuantizedTensor w = quantize(weight(), {QuantType::kNF4, kBlocksize, true});
  for (auto _ : state) {
    if (cached) {
      benchmark::DoNotOptimize(w.dequantize(at::kBFloat16));
    } else {
      benchmark::DoNotOptimize(dequantize_4bit(w.data, decode_nested_absmax(*w.nested), w.code,
                                               kElements, kBlocksize, at::kBFloat16));
    }
  }
  report(state, kElements * 2);
}

// memcpy of the dequantized output's size (arg 1: dtype as above), split over the threads, in
// two regimes (arg 2): 0 the same pair of buffers every call (with 2 threads the halves can stay
// in the two cores' L3 caches: the copy then runs far above memory bandwidth), 1 a rotation over
// 8 pairs (512 MiB for bf16), which streams from memory as a model's weights do when loaded.
void BM_Memcpy(benchmark::State& state) {
  set_threads(state);
  const at::ScalarType dtype = kDtypes[state.range(1)];
  const bool streamed = state.range(2) == 1;
  state.SetLabel(std::string(c10::toString(dtype)) + (streamed ? " streamed" : " same buffers"));
  const int64_t bytes = kElements * static_cast<int64_t>(c10::elementSize(dtype));
  std::vector<at::Tensor> sources, targets;
  for (int i = 0; i < (streamed ? 8 : 1); ++i) {
    sources.push_back(at::rand({bytes / 4}));
    targets.push_back(at::rand({bytes / 4}));
  }
  const int64_t chunk = bytes / at::get_num_threads();
  size_t next = 0;
  for (auto _ : state) {
    const auto* from = static_cast<const char*>(sources[next].data_ptr());
    auto* to = static_cast<char*>(targets[next].data_ptr());
    next = (next + 1) % sources.size();
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t begin, int64_t end) {
      std::memcpy(to + begin * chunk, from + begin * chunk,
                  static_cast<size_t>((end - begin) * chunk));
    });
    benchmark::ClobberMemory();
  }
  report(state, bytes);
}

void PathsAndDtypes(benchmark::internal::Benchmark* b) {
  for (int64_t threads : {1, 2}) {
    for (int64_t dtype : {0, 1, 2}) {
      for (int64_t reuse : {0, 1}) {
        for (int64_t path : {1, 2, 3}) b->Args({threads, path, dtype, reuse});
      }
    }
  }
}

BENCHMARK(BM_NF4Quantize)
    ->ArgsProduct({{1, 2}, {1, 2, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_FP4Quantize)
    ->ArgsProduct({{1, 2}, {1, 2, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Int8Quantize)
    ->ArgsProduct({{1, 2}, {1, 2, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_NF4Dequantize)->Apply(PathsAndDtypes)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_NF4DoubleQuantDequantize)
    ->ArgsProduct({{1, 2}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_FreshOutputWrite)
    ->ArgsProduct({{1, 2}, {0, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Memcpy)
    ->ArgsProduct({{1, 2}, {0, 2}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace qtrain

BENCHMARK_MAIN();

// CPU optimizer step time on one 4096x4096 float32 parameter (16M elements): AdamW with float32
// states against bitsandbytes-style 8-bit blockwise AdamW, with their exact state bytes.
//
//   build/tools/bench/bench_optim [--benchmark_filter=...]
#include "trainer/optim/optimizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

namespace qtrain {
namespace {

constexpr int64_t kRows = 4096;
constexpr int64_t kCols = 4096;

void BM_OptimizerStep(benchmark::State& state, const std::string& kind) {
  at::manual_seed(0);
  at::Tensor param = (at::randn({kRows, kCols}) * 0.02).set_requires_grad(true);
  param.mutable_grad() = at::randn({kRows, kCols}) * 1e-3;
  AdamWOptions options;
  options.weight_decay = 0.01;
  auto opt = make_optimizer(kind, {{"w", param}}, options);
  opt->step();  // first touch of the state pages
  for (auto _ : state) opt->step();
  state.counters["state_MiB"] = static_cast<double>(opt->state_bytes()) / (1 << 20);
  state.counters["param_M"] = static_cast<double>(kRows * kCols) / 1e6;
  state.counters["threads"] = at::get_num_threads();
}

BENCHMARK_CAPTURE(BM_OptimizerStep, adamw, std::string("adamw"))
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_OptimizerStep, adamw_8bit, std::string("adamw_8bit"))
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace qtrain

BENCHMARK_MAIN();

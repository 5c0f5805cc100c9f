// Optimizer step time.
//
// BM_OptimizerStep: one 4096x4096 float32 parameter (16M elements), AdamW with float32 states
// against bitsandbytes-style 8-bit blockwise AdamW, with their exact state bytes.
//
// BM_AdapterAdamW / BM_AdapterAdamW8bit: a realistic adapter set, Llama-3-8B's LoRA r=16 on all
// seven linear modules of 32 layers (448 tensors, A and B), every dimension divided by 4 so the
// set fits a CPU run (hidden 1024, kv 256, intermediate 3584: 10.5M bf16 parameters with float32
// masters). The AdamW cases compare the per-tensor loop ("before", ~8 ATen operations per
// tensor) with the _foreach_ and at::_fused_adamw_ forms (adamw_update.h); the 8-bit cases the
// per-tensor composite path with the multi-tensor kernel on CUDA. Pass --benchmark_filter=cuda
// on a GPU machine (the CUDA cases skip without one).
//
//   build/tools/bench/bench_optim [--benchmark_filter=...]
//
// Measured on the 2-core CI-class CPU, OMP_NUM_THREADS=1, Release, medians of 3 (ms per step):
//   OptimizerStep       adamw 121, adamw_8bit 421
//   AdapterAdamW        cpu_per_tensor 31, cpu_foreach 89 (0.35x), cpu_fused 38 (0.82x)
//   AdapterAdamW8bit    cpu_loop 250
// On the CPU the per-tensor loop keeps each small tensor in cache while _foreach_ streams every
// operation over all 448, so kAuto keeps the loop there; the multi-tensor forms are for CUDA,
// where the loop costs ~8 launches per tensor (not measured here: no GPU in this run).
#include "quant/codebooks.h"
#include "trainer/optim/adam_8bit_kernel.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/optimizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/cuda.h>

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

// Llama-3-8B / 4, LoRA r=16 on q, k, v, o, gate, up, down of 32 layers, bf16, with gradients.
NamedParameters adapter_set(at::Device device) {
  constexpr int64_t kHidden = 1024, kKv = 256, kIntermediate = 3584, kRank = 16;
  const std::pair<const char*, std::pair<int64_t, int64_t>> modules[] = {
      {"q_proj", {kHidden, kHidden}},
      {"k_proj", {kHidden, kKv}},
      {"v_proj", {kHidden, kKv}},
      {"o_proj", {kHidden, kHidden}},
      {"gate_proj", {kHidden, kIntermediate}},
      {"up_proj", {kHidden, kIntermediate}},
      {"down_proj", {kIntermediate, kHidden}}};
  at::manual_seed(0);
  const auto options = at::TensorOptions().dtype(at::kBFloat16).device(device);
  NamedParameters out;
  for (int layer = 0; layer < 32; ++layer) {
    for (const auto& [module, dims] : modules) {
      const std::string prefix = "layers." + std::to_string(layer) + "." + module;
      for (const auto& [suffix, shape] :
           {std::pair<const char*, std::vector<int64_t>>{".lora_A", {kRank, dims.first}},
            {".lora_B", {dims.second, kRank}}}) {
        at::Tensor p = (at::randn(shape) * 0.02).to(options).set_requires_grad(true);
        p.mutable_grad() = (at::randn(shape) * 1e-3).to(options);
        out.emplace_back(prefix + suffix, p);
      }
    }
  }
  return out;
}

int64_t numel_of(const NamedParameters& params) {
  int64_t n = 0;
  for (const auto& [name, p] : params) n += p.numel();
  return n;
}

void synchronize(at::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

bool skip_without_cuda(benchmark::State& state, at::Device device) {
  if (device.is_cuda() && !torch::cuda::is_available()) {
    state.SkipWithError("no CUDA device");
    return true;
  }
  return false;
}

void BM_AdapterAdamW(benchmark::State& state, AdamWKernel kernel, at::Device device) {
  if (skip_without_cuda(state, device)) return;
  NamedParameters params = adapter_set(device);
  AdamWOptions options;
  options.weight_decay = 0.01;
  AdamW opt(params, options, /*paged=*/false, kernel);
  opt.step();
  synchronize(device);
  for (auto _ : state) {
    opt.step();
    synchronize(device);
  }
  state.counters["tensors"] = static_cast<double>(params.size());
  state.counters["param_M"] = static_cast<double>(numel_of(params)) / 1e6;
  state.counters["threads"] = at::get_num_threads();
}

// "before": adam_8bit_blockwise_update_composite per tensor on CUDA (~40 ATen operations each)
// or the CPU loop; "after": adam_8bit_blockwise_update_many (the multi-tensor CUDA kernel).
void BM_AdapterAdamW8bit(benchmark::State& state, bool many, at::Device device) {
  if (skip_without_cuda(state, device)) return;
  NamedParameters params = adapter_set(device);
  const at::Tensor q1 = dynamic_code_signed().to(device), q2 = dynamic_code_unsigned().to(device);
  std::vector<Adam8bitBlockwiseTensors> states;
  for (auto& [name, p] : params) {
    const at::Tensor master = p.detach().to(at::kFloat);
    const int64_t blocks = (p.numel() + kAdam8bitBlocksize - 1) / kAdam8bitBlocksize;
    const auto bytes = at::TensorOptions().dtype(at::kByte).device(device);
    const auto floats = at::TensorOptions().dtype(at::kFloat).device(device);
    states.push_back({master, p.grad(), at::zeros(p.sizes(), bytes), at::zeros(p.sizes(), bytes),
                      at::zeros({blocks}, floats), at::zeros({blocks}, floats),
                      Adam8bitStep{2e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, 1}});
  }
  auto step = [&] {
    for (Adam8bitBlockwiseTensors& s : states) ++s.step.step;
    if (many || device.is_cpu()) {
      adam_8bit_blockwise_update_many(states, q1, q2);
    } else {
      for (Adam8bitBlockwiseTensors& s : states) {
        adam_8bit_blockwise_update_composite(s.param, s.grad, s.codes1, s.codes2, s.absmax1,
                                             s.absmax2, q1, q2, s.step);
      }
    }
  };
  step();
  synchronize(device);
  for (auto _ : state) {
    step();
    synchronize(device);
  }
  state.counters["tensors"] = static_cast<double>(params.size());
  state.counters["param_M"] = static_cast<double>(numel_of(params)) / 1e6;
}

const at::Device kCpu(at::kCPU);
const at::Device kCuda(at::kCUDA);

BENCHMARK_CAPTURE(BM_AdapterAdamW, cpu_per_tensor, AdamWKernel::kPerTensor, kCpu)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_AdapterAdamW, cpu_foreach, AdamWKernel::kForEach, kCpu)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_AdapterAdamW, cpu_fused, AdamWKernel::kFused, kCpu)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_AdapterAdamW8bit, cpu_loop, true, kCpu)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_AdapterAdamW, cuda_per_tensor, AdamWKernel::kPerTensor, kCuda)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_AdapterAdamW, cuda_foreach, AdamWKernel::kForEach, kCuda)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_AdapterAdamW, cuda_fused, AdamWKernel::kFused, kCuda)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_AdapterAdamW8bit, cuda_composite, false, kCuda)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_AdapterAdamW8bit, cuda_kernel, true, kCuda)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace qtrain

BENCHMARK_MAIN();

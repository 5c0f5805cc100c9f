// Decoder micro-benchmarks on the CPU: a full forward (prefill) and one KV-cached decode step of
// the "tiny" and "small" llama presets, and streaming a checkpoint in from safetensors.
//
//   build/tools/bench/bench_decoder [--benchmark_filter=...]
#include "formats/safetensors/safetensors.h"
#include "models/hf_loader.h"
#include "models/llama.h"
#include "models/tiny_model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <benchmark/benchmark.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <filesystem>

namespace qtrain {
namespace {

std::shared_ptr<CausalLM> random_model(const std::string& preset) {
  ModelConfig config = tiny_model_config("llama", preset);
  auto model = std::make_shared<CausalLM>(config, at::TensorOptions());
  torch::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  for (auto& p : model->parameters()) p.normal_(0.0, 0.02, gen);
  return model;
}

void BM_Prefill(benchmark::State& state, const std::string& preset) {
  auto model = random_model(preset);
  const int64_t length = state.range(0);
  at::Tensor ids = at::randint(0, model->config().vocab_size, {1, length}, at::kLong);
  torch::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(model->forward({.input_ids = ids}));
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(length),
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

void BM_DecodeStep(benchmark::State& state, const std::string& preset) {
  auto model = random_model(preset);
  const int64_t context = state.range(0);
  torch::NoGradGuard no_grad;
  KvCache prefix;
  model->forward({.input_ids = at::randint(0, 100, {1, context}, at::kLong), .cache = &prefix});
  at::Tensor next = at::tensor({7L}, at::kLong).view({1, 1});
  for (auto _ : state) {
    KvCache cache = prefix;  // shallow: the step appends new tensors and leaves the prefix alone
    benchmark::DoNotOptimize(
        model->forward({.input_ids = next, .cache = &cache, .last_token_only = true}));
  }
  state.counters["tokens/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_LoadCheckpoint(benchmark::State& state) {
  const std::string dir = std::filesystem::temp_directory_path() / "qtrain-bench-small";
  if (!std::filesystem::exists(dir + "/config.json")) {
    write_tiny_model({.arch = "llama", .preset = "small", .overwrite = true}, dir);
  }
  const auto bytes = std::filesystem::file_size(dir + "/model.safetensors");
  for (auto _ : state) benchmark::DoNotOptimize(load_causal_lm(dir));
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
}

BENCHMARK_CAPTURE(BM_Prefill, tiny, std::string("tiny"))
    ->Arg(128)
    ->Arg(512)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Prefill, small, std::string("small"))
    ->Arg(128)
    ->Arg(512)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DecodeStep, tiny, std::string("tiny"))
    ->Arg(128)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DecodeStep, small, std::string("small"))
    ->Arg(128)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LoadCheckpoint)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace qtrain

BENCHMARK_MAIN();

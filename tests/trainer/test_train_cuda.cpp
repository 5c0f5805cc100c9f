// The training path on a GPU (skipped without one):
//  - qtrain's steps of the micro model on CUDA give the CPU's losses within bf16 tolerance;
//  - attention runs on PyTorch's fused SDPA kernels (flash / memory-efficient), not the math
//    fallback, both for plain causal batches and for packed batches with segment masks: with
//    the math kernel disabled the forward still runs and agrees with the default dispatch.
#include "data/tiny_instruct.h"
#include "models/synthetic_model.h"
#include "models/tiny_model.h"
#include "peft/peft_files.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

namespace qtrain {
namespace {

#define REQUIRE_CUDA() \
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA GPU"

std::vector<double> losses(const std::string& run_dir) {
  std::vector<double> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto m = nlohmann::json::parse(line);
    if (m.contains("loss")) out.push_back(m["loss"].get<double>());
  }
  return out;
}

TEST(TrainCuda, StepsMatchTheCpuWithinBf16Tolerance) {
  REQUIRE_CUDA();
  testing::ScratchDir dir("qtrain-train-cuda");
  write_tiny_instruct_dataset(dir.file("data.jsonl"), 64, 5);
  const std::string common =
      "QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache " + testing::binary_dir() +
      "/tools/qtrain " + testing::source_dir() +
      "/recipes/tiny_qlora.yaml model.path=builtin:micro data.path=" + dir.file("data.jsonl") +
      " model.dtype=bfloat16 adapter.dropout=0 training.max_steps=4 training.warmup_steps=1"
      " training.optimizer=paged_adamw output.tensorboard=false";
  std::string out;
  ASSERT_EQ(testing::run_command(common + " model.device=cpu output.dir=" + dir.file("cpu"), &out),
            0)
      << out;
  ASSERT_EQ(
      testing::run_command(common + " model.device=cuda output.dir=" + dir.file("cuda"), &out), 0)
      << out;
  const auto cpu = losses(dir.file("cpu")), cuda = losses(dir.file("cuda"));
  ASSERT_EQ(cpu.size(), 4u);
  ASSERT_EQ(cuda.size(), 4u);
  for (size_t i = 0; i < cpu.size(); ++i) {
    // bf16 activations: a relative 2^-8 per rounding, a few hundred of them in a step
    EXPECT_NEAR(cuda[i], cpu[i], 0.03 * cpu[i]) << "step " << i + 1;
  }
}

TEST(TrainCuda, AttentionUsesTheFusedSdpaKernels) {
  REQUIRE_CUDA();
  SyntheticModelOptions options;
  options.dtype = at::kBFloat16;
  options.device = c10::Device(c10::kCUDA, 0);
  options.quant = QuantConfig{.type = QuantType::kNF4, .blocksize = 64, .double_quant = true};
  ModelConfig config = tiny_model_config("llama", "tiny");
  auto model = make_synthetic_causal_lm(config, options);
  const auto device = options.device;
  const at::Tensor ids = at::arange(2 * 64, at::kLong).remainder(config.vocab_size).view({2, 64});
  const at::Tensor positions = at::arange(64, at::kLong).repeat({2, 1});
  // Packed: two examples of 32 tokens per row, positions restarting, segments 0 and 1.
  const at::Tensor packed_positions = at::arange(32, at::kLong).repeat({2, 2});
  const at::Tensor segments = (at::arange(64, at::kLong) >= 32).to(at::kLong).repeat({2, 1});

  auto run = [&](bool packed) {
    ForwardInputs in{.input_ids = ids.to(device),
                     .position_ids = (packed ? packed_positions : positions).to(device)};
    if (packed) in.segment_ids = segments.to(device);
    return model->forward(in).to(at::kFloat).cpu();
  };
  const at::Tensor causal_default = run(false), packed_default = run(true);
  auto& context = at::globalContext();
  context.setSDPUseMath(false);
  at::Tensor causal_fused, packed_fused;
  std::string error;
  try {
    causal_fused = run(false);
    packed_fused = run(true);
  } catch (const std::exception& e) {
    error = e.what();
  }
  context.setSDPUseMath(true);
  ASSERT_TRUE(error.empty()) << "no fused SDPA kernel took the attention:\n" << error;
  const double scale = causal_default.abs().max().item<double>();
  EXPECT_LT((causal_fused - causal_default).abs().max().item<double>(), 0.05 * scale);
  EXPECT_LT((packed_fused - packed_default).abs().max().item<double>(), 0.05 * scale);
}

}  // namespace
}  // namespace qtrain

namespace qtrain {
namespace {

double adapter_distance(const LoadedAdapter& a, const LoadedAdapter& b) {
  double sum = 0;
  for (const auto& [module, tensors] : a.tensors) {
    for (const auto& [name, value] : tensors) {
      const at::Tensor other = b.tensors.at(module).at(name);
      sum += (value.to(at::kDouble) - other.to(at::kDouble)).pow(2).sum().item<double>();
    }
  }
  return std::sqrt(sum);
}

// 20 CUDA steps from adapters whose B is not zero (so A's gradient is live from the first step)
// land where 20 CPU steps land: their distance is a small part of how far training moved them. A
// broken backward moves them elsewhere (ratio ~1 or more) and a no-op optimizer step leaves them
// at the start (ratio exactly 1); bf16 rounding over 20 steps stays far below 0.25.
TEST(TrainCuda, TwentyStepsLandWhereTheCpuLands) {
  REQUIRE_CUDA();
  testing::ScratchDir dir("qtrain-train-cuda-20");
  write_tiny_instruct_dataset(dir.file("data.jsonl"), 96, 9);
  const std::string common =
      "QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache " + testing::binary_dir() +
      "/tools/qtrain " + testing::source_dir() +
      "/recipes/tiny_qlora.yaml model.path=builtin:micro data.path=" + dir.file("data.jsonl") +
      " data.packing=true adapter.dropout=0 training.warmup_steps=0 training.scheduler=constant"
      " training.eval_every=0 output.tensorboard=false output.save_every=0";
  std::string out;
  // A start with non-zero B: two CPU steps from the zero-B initialisation.
  ASSERT_EQ(
      testing::run_command(
          common + " model.device=cpu training.max_steps=2 output.dir=" + dir.file("start"), &out),
      0)
      << out;
  const std::string from =
      " training.max_steps=20 model.dtype=bfloat16 adapter.init_from=" + dir.file("start") +
      "/adapter";
  ASSERT_EQ(
      testing::run_command(common + from + " model.device=cpu output.dir=" + dir.file("cpu"), &out),
      0)
      << out;
  ASSERT_EQ(testing::run_command(
                common + from + " model.device=cuda output.dir=" + dir.file("cuda"), &out),
            0)
      << out;
  const LoadedAdapter start = load_peft_adapter(dir.file("start") + "/adapter");
  const LoadedAdapter cpu = load_peft_adapter(dir.file("cpu") + "/adapter");
  const LoadedAdapter cuda = load_peft_adapter(dir.file("cuda") + "/adapter");
  const double moved = adapter_distance(cpu, start);
  ASSERT_GT(moved, 0);
  EXPECT_LT(adapter_distance(cuda, cpu) / moved, 0.25)
      << "CUDA moved " << adapter_distance(cuda, start) << ", the CPU " << moved;
}

// training.deterministic: two CUDA runs of the same recipe give the same losses bit for bit.
TEST(TrainCuda, DeterministicRunsRepeatExactly) {
  REQUIRE_CUDA();
  testing::ScratchDir dir("qtrain-train-cuda-det");
  write_tiny_instruct_dataset(dir.file("data.jsonl"), 64, 4);
  const std::string common =
      "QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache " + testing::binary_dir() +
      "/tools/qtrain " + testing::source_dir() +
      "/recipes/tiny_qlora.yaml model.path=builtin:micro data.path=" + dir.file("data.jsonl") +
      " model.device=cuda model.dtype=bfloat16 data.packing=true training.max_steps=6"
      " training.deterministic=true training.eval_every=0 output.tensorboard=false";
  std::string out;
  for (const char* run : {"a", "b"}) {
    ASSERT_EQ(testing::run_command(common + " output.dir=" + dir.file(run), &out), 0) << out;
  }
  const auto a = losses(dir.file("a")), b = losses(dir.file("b"));
  ASSERT_EQ(a.size(), 6u);
  EXPECT_EQ(a, b);
}

}  // namespace
}  // namespace qtrain

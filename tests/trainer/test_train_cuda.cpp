// The training path on a GPU (skipped without one):
//  - qtrain's steps of the micro model on CUDA give the CPU's losses within bf16 tolerance;
//  - attention runs on PyTorch's fused SDPA kernels (flash / memory-efficient), not the math
//    fallback, both for plain causal batches and for packed batches with segment masks: with
//    the math kernel disabled the forward still runs and agrees with the default dispatch.
#include "data/tiny_instruct.h"
#include "models/synthetic_model.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

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

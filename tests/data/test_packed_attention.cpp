// A packed batch through a real model: each sample's logits in the packed row equal its logits
// run alone, so the batcher's segment and position ids keep packed samples apart.
#include "data/batcher.h"
#include "models/hf_loader.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace qtrain {
namespace {

using testing::ScratchDir;

class PackedAttention : public ::testing::TestWithParam<std::string> {};

TEST_P(PackedAttention, PackedLogitsEqualPerSampleLogits) {
  ScratchDir dir;
  TinyModelOptions options;
  options.arch = GetParam();
  options.preset = "micro";
  write_tiny_model(options, dir.file("model"));
  const auto model = load_causal_lm(dir.file("model"));
  model->eval();
  torch::NoGradGuard no_grad;

  // Three samples of different lengths, random in-vocabulary ids.
  at::manual_seed(0);
  std::vector<Example> examples;
  for (int64_t length : {9, 14, 6}) {
    const at::Tensor ids = at::randint(3, model->config().vocab_size, {length}, at::kLong);
    std::vector<int64_t> values(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + length);
    examples.push_back({values, values});
  }
  // One row of 32: the three samples (29 tokens) and a 3-token padding tail.
  Batcher batcher(examples,
                  {.micro_batch_size = 1, .seq_len = 32, .packing = true, .shuffle = false});
  const Batch batch = batcher.next();
  ASSERT_EQ(batch.input_ids.sizes(), (at::IntArrayRef{1, 32}));

  ForwardInputs packed;
  packed.input_ids = batch.input_ids;
  packed.position_ids = batch.position_ids;
  packed.segment_ids = batch.segment_ids;
  const at::Tensor packed_logits = model->forward(packed);  // [1, 32, V]
  ASSERT_EQ(packed_logits.scalar_type(), at::kFloat);

  ForwardInputs unsegmented = packed;
  unsegmented.segment_ids = at::Tensor();
  const at::Tensor leaky_logits = model->forward(unsegmented);

  int64_t offset = 0;
  for (const Example& example : examples) {
    const auto length = static_cast<int64_t>(example.ids.size());
    ForwardInputs alone;
    alone.input_ids = at::tensor(example.ids, at::kLong).view({1, length});
    const at::Tensor alone_logits = model->forward(alone);  // [1, L, V]
    const at::Tensor slice = packed_logits.narrow(1, offset, length);
    EXPECT_LE(testing::max_abs_diff(slice, alone_logits), 1e-5) << "sample at " << offset;
    if (offset > 0) {
      // Without segment ids the later samples see the earlier ones: the check can fail.
      EXPECT_GT(testing::max_abs_diff(leaky_logits.narrow(1, offset, length), alone_logits), 1e-3);
    }
    offset += length;
  }
  EXPECT_FALSE(at::isnan(packed_logits).any().item<bool>()) << "padding rows must stay finite";
}

INSTANTIATE_TEST_SUITE_P(Archs, PackedAttention, ::testing::Values("llama", "qwen3"));

}  // namespace
}  // namespace qtrain

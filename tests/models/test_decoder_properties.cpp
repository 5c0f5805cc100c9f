// Decoder properties that hold whatever the reference: GQA generalises MHA, packed samples do not
// see each other, the KV cache changes nothing, the sliding window limits what a query sees, and
// linear slots can be replaced.
#include "core/error.h"
#include "models/attention_mask.h"
#include "models/llama.h"
#include "tests/models/random_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

namespace qtrain {
namespace {

using testing::max_abs_diff;
using testing::random_model;
using testing::small_config;

at::Tensor ids(std::vector<int64_t> values) {
  return at::tensor(values, at::kLong).view({1, -1});
}

at::Tensor logits(CausalLM& model, const at::Tensor& input_ids) {
  torch::NoGradGuard no_grad;
  return model.forward({.input_ids = input_ids});
}

TEST(DecoderTest, GroupedQueryAttentionWithDuplicatedHeadsEqualsMultiHead) {
  for (const std::string type : {"llama", "qwen2", "qwen3"}) {
    ModelConfig gqa_config = small_config(type, /*kv_heads=*/2);
    ModelConfig mha_config = small_config(type, /*kv_heads=*/4);
    auto gqa = random_model(gqa_config, 11);
    auto mha = std::make_shared<CausalLM>(mha_config, at::TensorOptions());
    torch::NoGradGuard no_grad;
    auto source = gqa->named_parameters(true);
    const int64_t group = 4 / 2, hd = gqa_config.head_dim;
    for (auto& item : mha->named_parameters(true)) {
      at::Tensor from = source[item.key()];
      const bool kv = item.key().find("k_proj") != std::string::npos ||
                      item.key().find("v_proj") != std::string::npos;
      if (kv) {
        // MHA head h reads GQA kv head h / group: repeat each head's rows `group` times.
        std::vector<int64_t> per_head = {2, hd};
        for (int64_t i = 1; i < from.dim(); ++i) per_head.push_back(from.size(i));
        from = from.reshape(per_head).repeat_interleave(group, 0).reshape(item.value().sizes());
      }
      item.value().copy_(from);
    }
    at::Tensor input = ids({5, 17, 3, 88, 42, 7, 7, 1});
    EXPECT_LT(max_abs_diff(logits(*gqa, input), logits(*mha, input)), 1e-5) << type;
  }
}

TEST(DecoderTest, PackedSamplesMatchTheSamplesRunAlone) {
  for (const std::string type : {"llama", "qwen3"}) {
    auto model = random_model(small_config(type), 3);
    std::vector<int64_t> a = {4, 8, 15, 16, 23}, b = {42, 1, 2, 3, 5, 8, 13};
    std::vector<int64_t> packed = a, positions, segments;
    packed.insert(packed.end(), b.begin(), b.end());
    for (size_t i = 0; i < a.size(); ++i) positions.push_back(i), segments.push_back(0);
    for (size_t i = 0; i < b.size(); ++i) positions.push_back(i), segments.push_back(1);
    torch::NoGradGuard no_grad;
    at::Tensor together = model->forward(
        {.input_ids = ids(packed), .position_ids = ids(positions), .segment_ids = ids(segments)});
    at::Tensor alone_a = logits(*model, ids(a));
    at::Tensor alone_b = logits(*model, ids(b));
    EXPECT_LT(max_abs_diff(together.narrow(1, 0, a.size()), alone_a), 1e-5) << type;
    EXPECT_LT(max_abs_diff(together.narrow(1, a.size(), b.size()), alone_b), 1e-5) << type;
    // Without the boundaries the second sample would see the first: the logits must differ.
    at::Tensor leaky = model->forward({.input_ids = ids(packed), .position_ids = ids(positions)});
    EXPECT_GT(max_abs_diff(leaky.narrow(1, a.size(), b.size()), alone_b), 1e-3) << type;
  }
}

TEST(DecoderTest, KvCacheGivesTheLogitsOfTheFullForward) {
  for (const std::string type : {"llama", "qwen2", "qwen3"}) {
    auto model = random_model(small_config(type), 5);
    std::vector<int64_t> tokens = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12};
    at::Tensor full = logits(*model, ids(tokens));
    torch::NoGradGuard no_grad;
    KvCache cache;
    // A prefill of 5 tokens, then a chunk of 3, then one token at a time.
    std::vector<std::pair<size_t, size_t>> chunks = {{0, 5}, {5, 3}};
    for (size_t i = 8; i < tokens.size(); ++i) chunks.push_back({i, 1});
    for (auto [start, count] : chunks) {
      std::vector<int64_t> part(tokens.begin() + start, tokens.begin() + start + count);
      at::Tensor step = model->forward({.input_ids = ids(part), .cache = &cache});
      EXPECT_LT(max_abs_diff(step, full.narrow(1, start, count)), 1e-5)
          << type << " chunk at " << start;
    }
    EXPECT_EQ(cache.length(), static_cast<int64_t>(tokens.size()));
  }
}

TEST(DecoderTest, AttentionMaskCombinesCausalSegmentsAndWindow) {
  at::Tensor segments = at::tensor({0, 0, 0, 1, 1}, at::kLong).view({1, 5});
  at::Tensor mask = build_attention_mask(1, 5, 0, segments, /*window=*/2, at::kCPU);
  const bool expected[5][5] = {
      {1, 0, 0, 0, 0}, {1, 1, 0, 0, 0}, {0, 1, 1, 0, 0}, {0, 0, 0, 1, 0}, {0, 0, 0, 1, 1}};
  for (int q = 0; q < 5; ++q) {
    for (int k = 0; k < 5; ++k) EXPECT_EQ(mask[0][0][q][k].item<bool>(), expected[q][k]) << q << k;
  }
  // With a cache of 3, query i sits at index 3 + i.
  at::Tensor cached = build_attention_mask(1, 2, 3, {}, std::nullopt, at::kCPU);
  ASSERT_EQ(cached.sizes(), at::IntArrayRef({1, 1, 2, 5}));
  EXPECT_EQ(cached.sum().item<int64_t>(), 4 + 5);
  EXPECT_FALSE(build_attention_mask(2, 4, 0, {}, std::nullopt, at::kCPU).defined());
}

TEST(DecoderTest, SlidingWindowLimitsTheReceptiveField) {
  // One layer with window 2: the logits at position t depend on tokens t-1 and t only.
  ModelConfig config = small_config("mistral");
  config.num_hidden_layers = 1;
  config.sliding_window = 2;
  auto model = random_model(config, 8);
  at::Tensor a = logits(*model, ids({1, 2, 3, 4, 5, 6}));
  at::Tensor b = logits(*model, ids({50, 60, 70, 4, 5, 6}));
  EXPECT_LT(max_abs_diff(a.narrow(1, 4, 2), b.narrow(1, 4, 2)), 1e-5);
  EXPECT_GT(max_abs_diff(a.narrow(1, 3, 1), b.narrow(1, 3, 1)), 1e-4);
}

// A slot that returns zeros, to check that replaced slots are the ones the forward uses.
class ZeroLinear : public LinearSlot {
 public:
  ZeroLinear(int64_t in, int64_t out) : in_(in), out_(out) {}
  at::Tensor forward(const at::Tensor& x) override {
    auto shape = x.sizes().vec();
    shape.back() = out_;
    return at::zeros(shape, x.options());
  }
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }

 private:
  int64_t in_, out_;
};

TEST(DecoderTest, ReplacedLinearSlotsAreUsedAndChecked) {
  ModelConfig config = small_config("llama");
  auto model = random_model(config, 9);
  auto names = model->named_linears();
  EXPECT_EQ(names.size(), static_cast<size_t>(7 * config.num_hidden_layers + 1));
  at::Tensor input = ids({1, 2, 3});
  at::Tensor before = logits(*model, input);
  model->replace_linear("lm_head",
                        std::make_shared<ZeroLinear>(config.hidden_size, config.vocab_size));
  EXPECT_EQ(logits(*model, input).abs().max().item<double>(), 0.0);
  // The module tree sees the new slot: lm_head no longer has a weight parameter.
  EXPECT_EQ(model->named_parameters(true).find("lm_head.weight"), nullptr);
  try {
    model->replace_linear("model.layers.0.mlp.up_proj", std::make_shared<ZeroLinear>(3, 4));
    FAIL() << "expected a shape error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kShape);
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.up_proj"), std::string::npos);
  }
  EXPECT_THROW(model->replace_linear("model.layers.9.mlp.up_proj", nullptr), Error);
  EXPECT_GT(before.abs().max().item<double>(), 0.0);
}

}  // namespace
}  // namespace qtrain

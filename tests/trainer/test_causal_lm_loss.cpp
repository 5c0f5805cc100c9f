// The loss of a packed batch equals the losses of its samples run one by one: packing changes
// the speed, never the objective. Also the shift and the ignore label against an explicit sum.
#include "trainer/causal_lm_loss.h"

#include "data/batcher.h"
#include "data/examples.h"
#include "models/llama.h"
#include "tests/models/random_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace qtrain {
namespace {

TEST(CausalLmLoss, ShiftAndIgnoreLabelAgainstAnExplicitSum) {
  at::manual_seed(3);
  at::Tensor logits = at::randn({2, 5, 11}, at::kDouble);
  at::Tensor labels = at::randint(0, 11, {2, 5}, at::TensorOptions().dtype(at::kLong));
  labels[0][0] = kIgnoreLabel;
  labels[0][3] = kIgnoreLabel;
  labels[1][4] = kIgnoreLabel;
  double expected = 0;
  int64_t count = 0;
  at::Tensor logp = logits.log_softmax(-1);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t t = 0; t + 1 < 5; ++t) {
      const int64_t target = labels[b][t + 1].item<int64_t>();
      if (target == kIgnoreLabel) continue;
      expected -= logp[b][t][target].item<double>();
      ++count;
    }
  }
  EXPECT_EQ(count_loss_tokens(labels), count);
  EXPECT_NEAR(causal_lm_loss_sum(logits, labels).item<double>(), expected, 1e-5);
}

Example make_example(int64_t length, int64_t prompt, uint64_t seed) {
  at::Tensor ids = at::randint(3, 97, {length}, at::TensorOptions().dtype(at::kLong));
  Example e;
  e.ids.assign(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + length);
  e.labels = e.ids;
  for (int64_t i = 0; i < prompt; ++i) e.labels[i] = kIgnoreLabel;
  return e;
}

TEST(CausalLmLoss, PackedBatchEqualsSamplesOneByOne) {
  auto model = testing::random_model(testing::small_config("llama"), 5, at::kFloat);
  model->eval();
  at::manual_seed(9);
  std::vector<Example> examples = {make_example(9, 3, 1), make_example(14, 5, 2),
                                   make_example(6, 2, 3), make_example(11, 1, 4)};
  double separate_sum = 0;
  int64_t separate_tokens = 0;
  for (const auto& e : examples) {
    at::Tensor ids = at::tensor(e.ids, at::kLong).unsqueeze(0);
    at::Tensor labels = at::tensor(e.labels, at::kLong).unsqueeze(0);
    separate_sum += causal_lm_loss_sum(model->forward({.input_ids = ids}), labels).item<double>();
    separate_tokens += count_loss_tokens(labels);
  }

  Batcher packed(examples, {.micro_batch_size = 4, .seq_len = 48, .packing = true, .seed = 1});
  Batch batch = packed.next();
  ASSERT_EQ(batch.samples, 4);
  ASSERT_LT(batch.input_ids.size(0), 4);  // several samples share a row
  at::Tensor logits = model->forward({.input_ids = batch.input_ids,
                                      .position_ids = batch.position_ids,
                                      .segment_ids = batch.segment_ids});
  const double packed_sum = causal_lm_loss_sum(logits, batch.labels).item<double>();
  EXPECT_EQ(count_loss_tokens(batch.labels), separate_tokens);
  EXPECT_NEAR(packed_sum / separate_tokens, separate_sum / separate_tokens, 1e-5);

  // Without segment ids the samples would see each other and the loss would change.
  at::Tensor leaky =
      model->forward({.input_ids = batch.input_ids, .position_ids = batch.position_ids});
  EXPECT_GT(std::abs(causal_lm_loss_sum(leaky, batch.labels).item<double>() - packed_sum), 1e-3);
}

}  // namespace
}  // namespace qtrain

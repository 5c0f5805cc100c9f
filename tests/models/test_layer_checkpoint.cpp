// Gradient checkpointing must be invisible to the numbers: the same gradients as a plain backward
// pass, with dropout active (its masks replayed), and a smaller autograd graph after forward.
#include "models/layer_checkpoint.h"
#include "models/llama.h"
#include "tests/models/random_model.h"
#include "tests/support/sanitizer.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <torch/csrc/autograd/autograd.h>

#include <map>
#include <memory>
#include <string>

namespace qtrain {
namespace {

// A trainable dense projection behind dropout: stands in for a LoRA slot so this test needs
// nothing from peft/.
class DropoutLinear : public LinearSlot {
 public:
  DropoutLinear(std::shared_ptr<LinearSlot> inner, double p) : inner_(std::move(inner)), p_(p) {
    register_module("inner", inner_);
  }
  at::Tensor forward(const at::Tensor& x) override {
    return inner_->forward(at::dropout(x, p_, is_training()));
  }
  int64_t in_features() const override { return inner_->in_features(); }
  int64_t out_features() const override { return inner_->out_features(); }

 private:
  std::shared_ptr<LinearSlot> inner_;
  double p_;
};

std::shared_ptr<CausalLM> model_with_dropout(at::ScalarType dtype, int64_t layers = 2) {
  ModelConfig config = testing::small_config("llama");
  config.num_hidden_layers = layers;
  auto model = testing::random_model(config, 11, dtype);
  for (const auto& [name, slot] : model->named_linears()) {
    if (name == "lm_head") continue;
    model->replace_linear(name, std::make_shared<DropoutLinear>(slot, 0.3));
  }
  model->train();
  return model;
}

struct Step {
  at::Tensor loss;
  std::map<std::string, at::Tensor> grads;
  at::Tensor next_random;  // a draw after the step: the generator must end where it would
};

Step train_step(CausalLM& model, bool checkpointing, const at::Tensor& ids) {
  model.set_gradient_checkpointing(checkpointing);
  model.zero_grad();
  at::manual_seed(1234);
  at::Tensor logits = model.forward({.input_ids = ids});
  at::Tensor loss =
      at::cross_entropy_loss(logits.flatten(0, 1).to(at::kDouble), ids.roll(-1, 1).flatten());
  loss.backward();
  Step step{loss.detach(), {}, at::rand({4}, at::kDouble)};
  for (const auto& item : model.named_parameters()) {
    if (item.value().grad().defined()) step.grads[item.key()] = item.value().grad().clone();
  }
  return step;
}

TEST(LayerCheckpoint, SameGradientsWithDropout) {
  auto model = model_with_dropout(at::kDouble);
  at::Tensor ids = at::randint(0, 97, {2, 12}, at::TensorOptions().dtype(at::kLong));
  const Step plain = train_step(*model, false, ids);
  const Step checkpointed = train_step(*model, true, ids);

  EXPECT_EQ(plain.loss.item<double>(), checkpointed.loss.item<double>());
  ASSERT_EQ(plain.grads.size(), checkpointed.grads.size());
  ASSERT_GT(plain.grads.size(), 10u);
  for (const auto& [name, grad] : plain.grads) {
    ASSERT_TRUE(checkpointed.grads.count(name)) << name;
    EXPECT_LE(testing::max_abs_diff(grad, checkpointed.grads.at(name)), 1e-12) << name;
  }
  EXPECT_TRUE(at::equal(plain.next_random, checkpointed.next_random));
}

TEST(LayerCheckpoint, DropoutReallyDrawsMasks) {
  // Guards the test above: were the masks not replayed, gradients would differ this much.
  auto model = model_with_dropout(at::kDouble);
  at::Tensor ids = at::randint(0, 97, {2, 12}, at::TensorOptions().dtype(at::kLong));
  model->set_gradient_checkpointing(false);
  at::manual_seed(1);
  at::Tensor a = model->forward({.input_ids = ids});
  at::manual_seed(2);
  at::Tensor b = model->forward({.input_ids = ids});
  EXPECT_GT(testing::max_abs_diff(a, b), 1e-3);
}

TEST(LayerCheckpoint, EvalModeAndNoGradRunPlainForward) {
  auto model = model_with_dropout(at::kFloat);
  model->set_gradient_checkpointing(true);
  model->eval();
  at::Tensor ids = at::randint(0, 97, {1, 8}, at::TensorOptions().dtype(at::kLong));
  at::Tensor a = model->forward({.input_ids = ids});
  EXPECT_TRUE(a.requires_grad());  // the dense parameters are trainable here
  {
    at::NoGradGuard no_grad;
    model->train();
    at::Tensor b = model->forward({.input_ids = ids});
    EXPECT_FALSE(b.requires_grad());
  }
}

// Heap bytes in use (glibc): small-block arena plus mmap'd blocks.
int64_t heap_in_use() {
#if QTRAIN_ASAN
  // AddressSanitizer replaces malloc; glibc's mallinfo2 then sees nothing.
  return static_cast<int64_t>(__sanitizer_get_current_allocated_bytes());
#else
  struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
#endif
}

// Bytes the autograd graph holds between forward and backward.
int64_t retained_after_forward(bool checkpointing) {
  auto model = model_with_dropout(at::kFloat, 4);
  model->set_gradient_checkpointing(checkpointing);
  at::Tensor ids = at::randint(0, 97, {4, 256}, at::TensorOptions().dtype(at::kLong));
  const int64_t before = heap_in_use();
  at::Tensor logits = model->forward({.input_ids = ids});
  at::Tensor loss = logits.to(at::kFloat).logsumexp(-1).mean();
  const int64_t held = heap_in_use() - before;
  loss.backward();
  return held;
}

TEST(LayerCheckpoint, HoldsLessActivationMemory) {
  const int64_t plain = retained_after_forward(false);
  const int64_t checkpointed = retained_after_forward(true);
  std::printf("activation bytes held after forward: plain %lld, checkpointed %lld\n",
              static_cast<long long>(plain), static_cast<long long>(checkpointed));
  EXPECT_LT(checkpointed * 2, plain);
}

}  // namespace
}  // namespace qtrain

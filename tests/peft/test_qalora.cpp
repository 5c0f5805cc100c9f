// QA-LoRA on a group-wise INT4 base: gradients equal a dense float64 equivalent, dropout acts on
// the pooled input, and — the headline — merging folds the adapter into the zero points: the model
// stays pure INT4 (codes bit-identical) and computes the adapter's logits, while a plain LoRA
// delta merged and re-quantized into the same format loses much of the adapter.
#include "core/error.h"
#include "models/hf_loader.h"
#include "models/int4_linear_slot.h"
#include "models/int4_loader.h"
#include "models/tiny_model.h"
#include "peft/apply_lora.h"
#include "peft/apply_qalora.h"
#include "peft/lora_linear.h"
#include "peft/qalora_linear.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cstdio>
#include <memory>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

at::Generator cpu_generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

std::shared_ptr<Int4LinearSlot> int4_slot(int64_t out, int64_t in, int64_t g, bool bias,
                                          uint64_t seed) {
  auto gen = cpu_generator(seed);
  at::Tensor w = at::randn({out, in}, gen) / std::sqrt(static_cast<double>(in));
  return std::make_shared<Int4LinearSlot>(quantize_int4_group(w, g),
                                          bias ? at::randn({out}, gen) : at::Tensor());
}

LoraConfig config(at::ScalarType dtype, double dropout = 0.0) {
  LoraConfig c;
  c.r = 4;
  c.alpha = 12;
  c.dropout = dropout;
  c.dtype = dtype;
  return c;
}

// Pooling as a matrix: P [in/g, in] with 1/g on each group's columns.
at::Tensor pooling_matrix(int64_t in, int64_t g, at::ScalarType dtype) {
  return at::eye(in / g, dtype).repeat_interleave(g, /*dim=*/1) / static_cast<double>(g);
}

TEST(QaLoraTest, FreshAdapterHasPeftShapesAndLeavesTheOutputUnchanged) {
  auto base = int4_slot(24, 128, 32, true, 1);
  QaLoraLinear layer(base, config(at::kFloat), 32, cpu_generator(7));
  auto tensors = layer.adapter_tensors();
  ASSERT_EQ(tensors.size(), 2u);
  EXPECT_EQ(tensors[0].first, "lora_A.weight");
  EXPECT_EQ(tensors[0].second.sizes(), (std::vector<int64_t>{4, 4}));  // [r, in/g]
  EXPECT_EQ(tensors[1].first, "lora_B.weight");
  EXPECT_EQ(tensors[1].second.sizes(), (std::vector<int64_t>{24, 4}));
  EXPECT_TRUE(tensors[0].second.requires_grad());
  EXPECT_TRUE(at::equal(layer.lora_B(), at::zeros({24, 4})));
  // kaiming_uniform(a=sqrt(5)) with fan-in in/g = 4: |A| <= 1/2.
  EXPECT_LE(layer.lora_A().abs().max().item<float>(), 0.5f);
  EXPECT_GT(layer.lora_A().abs().max().item<float>(), 0.3f);
  QaLoraLinear again(int4_slot(24, 128, 32, true, 1), config(at::kFloat), 32, cpu_generator(7));
  EXPECT_TRUE(at::equal(layer.lora_A(), again.lora_A()));
  at::Tensor x = at::randn({2, 3, 128});
  EXPECT_TRUE(at::equal(layer.forward(x), base->forward(x)));
  EXPECT_EQ(layer.scaling(), 3.0);
  // Module names as PEFT writes them.
  std::vector<std::string> names;
  for (const auto& p : layer.named_parameters(true)) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"lora_A.weight", "lora_B.weight"}));
}

TEST(QaLoraTest, OutputAndGradientsEqualADenseFloat64Equivalent) {
  const int64_t out = 24, in = 128, g = 32;
  auto base = int4_slot(out, in, g, true, 2);
  QaLoraLinear layer(base, config(at::kDouble), g, cpu_generator(3));
  layer.load_adapter_tensor("lora_B.weight", at::randn({out, 4}, cpu_generator(4)).to(at::kDouble));
  at::Tensor x = at::randn({3, 5, in}, at::kDouble).requires_grad_(true);
  at::Tensor y = layer.forward(x);
  at::Tensor upstream = at::randn(y.sizes(), at::kDouble);
  auto grads = torch::autograd::grad({y}, {x, layer.lora_A(), layer.lora_B()}, {upstream});

  // Dense equivalent: W from the int4 base, pooling as an explicit averaging matrix.
  const at::Tensor w = base->weight().dequantize(at::kDouble);
  const at::Tensor bias = base->bias().to(at::kDouble);
  at::Tensor x2 = x.detach().clone().requires_grad_(true);
  at::Tensor a2 = layer.lora_A().detach().clone().requires_grad_(true);
  at::Tensor b2 = layer.lora_B().detach().clone().requires_grad_(true);
  const at::Tensor pool = pooling_matrix(in, g, at::kDouble);
  at::Tensor y2 =
      at::matmul(x2, w.t()) + bias +
      layer.scaling() * at::matmul(at::matmul(at::matmul(x2, pool.t()), a2.t()), b2.t());
  auto expected = torch::autograd::grad({y2}, {x2, a2, b2}, {upstream});
  EXPECT_LT(t::max_abs_diff(y, y2), 1e-12);
  EXPECT_LT(t::max_abs_diff(grads[0], expected[0]), 1e-12) << "grad x";
  EXPECT_LT(t::max_abs_diff(grads[1], expected[1]), 1e-12) << "grad A";
  EXPECT_LT(t::max_abs_diff(grads[2], expected[2]), 1e-12) << "grad B";
  EXPECT_GT(grads[1].abs().max().item<double>(), 0.0);

  // The adapter is the dense delta D[n, G(i)] = scaling (B A)[n, G] / g: what merge absorbs.
  torch::NoGradGuard no_grad;
  at::Tensor adapter_only = layer.forward(x) - base->forward(x);
  EXPECT_LT(t::max_abs_diff(adapter_only, at::matmul(x, layer.delta_weight().t())), 1e-12);
}

TEST(QaLoraTest, DropoutActsOnThePooledInputInTrainingModeOnly) {
  auto base = int4_slot(16, 64, 32, false, 5);
  QaLoraLinear layer(base, config(at::kFloat, 0.5), 32, cpu_generator(6));
  layer.load_adapter_tensor("lora_B.weight", at::randn({16, 4}, cpu_generator(8)));
  const at::Tensor x = at::randn({4, 64});
  torch::NoGradGuard no_grad;
  layer.train(true);
  at::manual_seed(11);
  const at::Tensor y = layer.forward(x);
  at::manual_seed(11);
  const at::Tensor pooled = x.view({4, 2, 32}).mean(-1);
  const at::Tensor dropped = at::dropout(pooled, 0.5, true);  // the same mask, pooled shape
  const at::Tensor expected =
      base->forward(x) +
      3.0 * at::matmul(at::matmul(dropped, layer.lora_A().t()), layer.lora_B().t());
  EXPECT_LT(t::max_abs_diff(y, expected), 1e-6);
  layer.eval();
  const at::Tensor y_eval = layer.forward(x);
  const at::Tensor no_dropout =
      base->forward(x) +
      3.0 * at::matmul(at::matmul(pooled, layer.lora_A().t()), layer.lora_B().t());
  EXPECT_LT(t::max_abs_diff(y_eval, no_dropout), 1e-6);
  EXPECT_GT(t::max_abs_diff(y, y_eval), 1e-3);  // the mask did something
}

TEST(QaLoraTest, MergeShiftsOnlyTheZerosAndUnmergeRestoresThemBitForBit) {
  const int64_t g = 64;
  auto base = int4_slot(32, 256, g, true, 9);
  const Int4GroupTensor before = base->weight();
  QaLoraLinear layer(base, config(at::kFloat), g, cpu_generator(10));
  layer.load_adapter_tensor("lora_B.weight", at::randn({32, 4}, cpu_generator(12)));
  const at::Tensor x = at::randn({6, 256});
  torch::NoGradGuard no_grad;
  const at::Tensor adapted = layer.forward(x);
  layer.merge();
  EXPECT_TRUE(layer.merged());
  const Int4GroupTensor& merged = base->weight();
  EXPECT_TRUE(at::equal(merged.codes, before.codes));
  EXPECT_TRUE(at::equal(merged.scales, before.scales));
  EXPECT_FALSE(at::equal(merged.zeros, at::round(merged.zeros)));  // fractional now
  EXPECT_EQ(merged.zeros.scalar_type(), at::kFloat);
  // z' = z - D / s, element by element.
  EXPECT_LT(t::max_abs_diff(merged.zeros, before.zeros - layer.zero_shift()), 1e-6);
  // The merged base alone computes base + adapter.
  EXPECT_LT(t::max_abs_diff(base->forward(x), adapted), 2e-5);
  EXPECT_LT(t::max_abs_diff(layer.forward(x), adapted), 2e-5);
  EXPECT_THROW(layer.merge(), Error);
  EXPECT_THROW(layer.load_adapter_tensor("lora_B.weight", at::zeros({32, 4})), Error);
  layer.unmerge();
  EXPECT_TRUE(at::equal(base->weight().zeros, before.zeros));
  EXPECT_TRUE(at::equal(layer.forward(x), adapted));
  EXPECT_THROW(layer.unmerge(), Error);
}

TEST(QaLoraTest, BadTensorsAndGroupSizesAreNamed) {
  auto base = int4_slot(16, 64, 32, false, 13);
  EXPECT_THROW(QaLoraLinear(base, config(at::kFloat), 64, cpu_generator(0)), Error);
  QaLoraLinear layer(base, config(at::kFloat), 32, cpu_generator(0));
  try {
    layer.load_adapter_tensor("lora_A.weight", at::zeros({4, 64}));  // a plain LoRA A
    FAIL() << "plain LoRA A accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kShape);
    EXPECT_EQ(e.context().tensor, "lora_A.weight");
  }
  EXPECT_THROW(layer.load_adapter_tensor("lora_C.weight", at::zeros({4, 2})), Error);
}

// One tiny Llama directory for the model-level tests (micro: hidden 64, intermediate 128).
class QaLoraModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new t::ScratchDir("qalora-model");
    write_tiny_model({.arch = "llama", .preset = "micro", .seed = 21}, dir());
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }
  static std::string dir() { return scratch_->file("m"); }
  static std::shared_ptr<CausalLM> load_int4() {
    auto model = load_int4_causal_lm(dir(), {.dtype = at::kFloat, .group_size = 32});
    model->eval();
    return model;
  }
  static at::Tensor logits(CausalLM& model) {
    torch::NoGradGuard no_grad;
    const at::Tensor ids = at::tensor({1, 40, 7, 99, 12, 300, 5, 64, 3, 17, 250, 8}, at::kLong);
    return model.forward({.input_ids = ids.view({2, -1})});
  }
  // Fills every adapter's lora_B with N(0, std^2) so the adapters change the logits.
  static void randomise_b(const NamedAdapters& adapters, double std, uint64_t seed) {
    auto gen = cpu_generator(seed);
    for (const auto& [name, adapter] : adapters) {
      for (const auto& [tensor_name, tensor] : adapter->adapter_tensors()) {
        if (tensor_name != "lora_B.weight") continue;
        adapter->load_adapter_tensor(tensor_name, at::randn(tensor.sizes(), gen) * std);
      }
    }
  }

  static t::ScratchDir* scratch_;
};
t::ScratchDir* QaLoraModelTest::scratch_ = nullptr;

LoraConfig model_config() {
  LoraConfig c;
  c.r = 8;
  c.alpha = 16;
  c.dtype = at::kFloat;
  return c;  // all-linear
}

TEST_F(QaLoraModelTest, LoaderQuantizesEveryProjectionButTheSkippedHead) {
  auto model = load_int4();
  auto dense = load_causal_lm(dir());
  const auto dense_slots = dense->named_linears();
  const auto int4_slots_by_name = model->named_linears();
  ASSERT_EQ(int4_slots_by_name.size(), dense_slots.size());
  int int4_slots = 0;
  for (size_t i = 0; i < dense_slots.size(); ++i) {
    const auto& [name, slot] = int4_slots_by_name[i];
    auto int4 = std::dynamic_pointer_cast<Int4LinearSlot>(slot);
    if (name == "lm_head") {
      EXPECT_FALSE(int4);
      continue;
    }
    ASSERT_TRUE(int4) << name;
    ++int4_slots;
    const auto d = std::dynamic_pointer_cast<DenseLinear>(dense_slots[i].second);
    const Int4GroupTensor expected = quantize_int4_group(d->weight(), 32);
    EXPECT_TRUE(at::equal(int4->weight().codes, expected.codes)) << name;
    EXPECT_TRUE(at::equal(int4->weight().scales, expected.scales)) << name;
    EXPECT_EQ(int4->weight().dtype, at::kFloat);
  }
  EXPECT_EQ(int4_slots, 7 * model->config().num_hidden_layers);
  // The int4 model computes what the dense model does with the dequantized weights.
  for (size_t i = 0; i < dense_slots.size(); ++i) {
    auto int4 = std::dynamic_pointer_cast<Int4LinearSlot>(int4_slots_by_name[i].second);
    if (!int4) continue;
    torch::NoGradGuard no_grad;
    std::dynamic_pointer_cast<DenseLinear>(dense_slots[i].second)
        ->weight()
        .copy_(int4->weight().dequantize(at::kFloat));
  }
  dense->eval();
  EXPECT_LT(t::max_abs_diff(logits(*model), logits(*dense)), 1e-5);
  EXPECT_THROW(load_int4_causal_lm(dir(), {.dtype = at::kFloat, .group_size = 48}), Error);
}

TEST_F(QaLoraModelTest, MergedModelStaysInt4AndReproducesTheAdapterLogits) {
  auto model = load_int4();
  const at::Tensor base_logits = logits(*model);
  NamedAdapters adapters = apply_qalora(*model, model_config(), 32, /*seed=*/5);
  EXPECT_EQ(adapters.size(), 7u * model->config().num_hidden_layers);
  randomise_b(adapters, 0.5, 6);
  const at::Tensor adapted = logits(*model);
  const double adapter_effect = t::max_abs_diff(adapted, base_logits);

  std::vector<Int4GroupTensor> before;
  for (const auto& [name, adapter] : adapters) {
    before.push_back(std::dynamic_pointer_cast<Int4LinearSlot>(adapter->base())->weight());
    adapter->merge();
  }
  for (size_t i = 0; i < adapters.size(); ++i) {
    const auto& w = std::dynamic_pointer_cast<Int4LinearSlot>(adapters[i].second->base())->weight();
    EXPECT_TRUE(at::equal(w.codes, before[i].codes)) << adapters[i].first;
    EXPECT_TRUE(at::equal(w.scales, before[i].scales)) << adapters[i].first;
    EXPECT_FALSE(at::equal(w.zeros, before[i].zeros)) << adapters[i].first;
  }
  const at::Tensor merged = logits(*model);
  const double merge_diff = t::max_abs_diff(merged, adapted);
  std::printf("QA-LoRA: adapter moves logits by up to %.4f; merged-into-zeros vs unmerged: %.3g\n",
              adapter_effect, merge_diff);
  EXPECT_GT(adapter_effect, 0.5);
  EXPECT_LT(merge_diff, 5e-5);

  for (size_t i = 0; i < adapters.size(); ++i) {
    adapters[i].second->unmerge();
    const auto& w = std::dynamic_pointer_cast<Int4LinearSlot>(adapters[i].second->base())->weight();
    EXPECT_TRUE(at::equal(w.zeros, before[i].zeros)) << adapters[i].first;
  }
  EXPECT_TRUE(at::equal(logits(*model), adapted));
}

TEST_F(QaLoraModelTest, PlainLoraDeltaIsLostWhenRequantizedIntoTheGroupFormat) {
  // The same int4 base with a plain LoRA whose B is scaled so that it moves the logits about as
  // much as the QA-LoRA adapter above. Its delta B @ A varies inside every quantization group, so
  // merging means re-quantizing dequant(W) + delta, which rounds much of it away.
  auto qalora_model = load_int4();
  const at::Tensor base_logits = logits(*qalora_model);
  NamedAdapters qalora = apply_qalora(*qalora_model, model_config(), 32, 5);
  randomise_b(qalora, 0.5, 6);
  const at::Tensor qalora_logits = logits(*qalora_model);
  for (const auto& [name, adapter] : qalora) adapter->merge();
  const double qalora_merge_diff = t::max_abs_diff(logits(*qalora_model), qalora_logits);

  auto model = load_int4();
  NamedAdapters lora = apply_lora(*model, model_config(), 5);
  randomise_b(lora, 0.1, 6);
  const at::Tensor lora_logits = logits(*model);
  for (const auto& [name, adapter] : lora) {
    auto base = std::dynamic_pointer_cast<Int4LinearSlot>(adapter->base());
    ASSERT_TRUE(base) << name;
    at::Tensor merged_weight = base->weight().dequantize(at::kFloat) +
                               std::dynamic_pointer_cast<LoraLinear>(adapter)->delta_weight();
    model->replace_linear(name, std::make_shared<Int4LinearSlot>(
                                    quantize_int4_group(merged_weight, 32), base->bias()));
  }
  // Baseline: re-quantizing the unadapted base changes little, so the error above is the delta's.
  auto requantized_base = load_int4();
  for (const auto& [name, slot] : requantized_base->named_linears()) {
    auto base = std::dynamic_pointer_cast<Int4LinearSlot>(slot);
    if (!base) continue;
    requantized_base->replace_linear(
        name, std::make_shared<Int4LinearSlot>(
                  quantize_int4_group(base->weight().dequantize(at::kFloat), 32), base->bias()));
  }
  const double requantize_only_diff = t::max_abs_diff(logits(*requantized_base), base_logits);

  const double qalora_effect = t::max_abs_diff(qalora_logits, base_logits);
  const double lora_effect = t::max_abs_diff(lora_logits, base_logits);
  const double requantized_diff = t::max_abs_diff(logits(*model), lora_logits);
  std::printf(
      "adapter effect on logits: QA-LoRA %.4f, LoRA %.4f; merge error: QA-LoRA into zeros %.3g, "
      "LoRA re-quantized to int4 g32 %.4f (%.0f%% of its effect; re-quantizing the base alone: "
      "%.3g)\n",
      qalora_effect, lora_effect, qalora_merge_diff, requantized_diff,
      100 * requantized_diff / lora_effect, requantize_only_diff);
  EXPECT_LT(lora_effect, 2 * qalora_effect);  // a fair comparison: similar adapter strength
  EXPECT_GT(lora_effect, qalora_effect / 2);
  EXPECT_GT(requantized_diff, 1000 * qalora_merge_diff);
  EXPECT_GT(requantized_diff, 0.1 * lora_effect);
  EXPECT_LT(requantize_only_diff, 0.1 * requantized_diff);
}

TEST_F(QaLoraModelTest, NeedsAnInt4BaseWithTheSameGroupSize) {
  auto dense = load_causal_lm(dir());
  try {
    apply_qalora(*dense, model_config(), 32, 0);
    FAIL() << "QA-LoRA on a dense base accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("qalora needs an int4 base (quantization.type: int4)"),
              std::string::npos)
        << e.what();
  }
  auto model = load_int4();
  EXPECT_THROW(apply_qalora(*model, model_config(), 64, 0), Error);
  for (const auto& [name, slot] : model->named_linears()) {
    EXPECT_FALSE(std::dynamic_pointer_cast<AdapterSlot>(slot)) << name << " replaced";
  }
}

}  // namespace
}  // namespace qtrain

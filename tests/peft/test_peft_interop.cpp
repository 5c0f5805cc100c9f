// LoRA interop with PyPI peft 0.21 + transformers on a tiny float32 Llama
// (tests/reference/peft_reference.py, one Python run shared by the tests):
// (a) an adapter qtrain saves loads in PeftModel.from_pretrained with the same logits;
// (b) an adapter peft creates (rsLoRA, random B) loads in qtrain with the same logits;
// (c) one training step: qtrain's autograd gradients of every lora_A / lora_B equal PEFT's.
#include "formats/safetensors/safetensors.h"
#include "models/hf_loader.h"
#include "models/tiny_model.h"
#include "peft/apply_lora.h"
#include "peft/lora_linear.h"
#include "peft/peft_files.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <memory>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

const std::vector<std::vector<int64_t>> kInputIds = {{1, 5, 9, 20, 33, 100, 200, 300, 17, 42},
                                                     {7, 7, 8, 9, 10, 11, 12, 13, 250, 383}};
const std::vector<std::vector<int64_t>> kLabels = {
    {1, 5, 9, 20, 33, 100, 200, 300, 17, 42},
    {-100, -100, 8, 9, 10, 11, 12, 13, 250, -100}};  // ignored positions, as in SFT masks

at::Tensor to_tensor(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<int64_t> flat;
  for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  return at::tensor(flat, at::kLong).reshape({static_cast<int64_t>(rows.size()), -1});
}

LoraConfig qtrain_config() {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dtype = at::kFloat;
  c.target_modules = {"all-linear"};
  return c;
}

// The base model, qtrain's adapter, PEFT's adapter and PEFT's outputs, made once.
struct Reference {
  std::unique_ptr<t::ScratchDir> scratch;
  std::string base_dir, qtrain_adapter, peft_adapter;
  std::map<std::string, at::Tensor> outputs;
};

const Reference& reference() {
  static std::unique_ptr<Reference> ref;
  if (ref) return *ref;
  ref = std::make_unique<Reference>();
  ref->scratch = std::make_unique<t::ScratchDir>("qtrain-peft-interop");
  ref->base_dir = ref->scratch->file("base");
  ref->qtrain_adapter = ref->scratch->file("qtrain_adapter");
  ref->peft_adapter = ref->scratch->file("peft_adapter");
  TinyModelOptions tiny;
  tiny.arch = "llama";
  tiny.preset = "micro";
  tiny.seed = 3;
  tiny.dtype = "float32";
  write_tiny_model(tiny, ref->base_dir);

  {  // (a) qtrain's adapter, with B made non-zero so that it matters.
    auto model = load_causal_lm(ref->base_dir);
    auto adapters = apply_lora(*model, qtrain_config(), 11);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(12);
    for (const auto& [name, adapter] : adapters) {
      auto lora = std::dynamic_pointer_cast<LoraLinear>(adapter);
      lora->load_adapter_tensor("lora_B.weight", at::randn(lora->lora_B().sizes(), gen) * 0.2);
    }
    save_peft_adapter(ref->qtrain_adapter, adapters, qtrain_config(), ref->base_dir);
  }

  nlohmann::json inputs = {{"input_ids", kInputIds}, {"labels", kLabels}};
  t::write_file(ref->scratch->file("inputs.json"), inputs.dump());
  const std::string out = ref->scratch->file("peft_out.safetensors");
  std::string log;
  const int rc = t::run_reference_script("peft_reference.py",
                                         {ref->base_dir, ref->scratch->file("inputs.json"),
                                          ref->qtrain_adapter, ref->peft_adapter, out},
                                         &log);
  if (rc != 0) throw std::runtime_error("peft_reference.py failed:\n" + log);
  auto file = SafetensorsFile::open(out);
  for (const auto& name : file->names()) ref->outputs[name] = file->tensor(name).clone();
  return *ref;
}

// qtrain's model with an adapter directory attached, as a user would load it.
std::shared_ptr<CausalLM> model_with_adapter(const std::string& base, const std::string& adapter,
                                             NamedAdapters* adapters = nullptr) {
  auto model = load_causal_lm(base);
  auto attached = attach_peft_adapter(*model, load_peft_adapter(adapter));
  if (adapters) *adapters = attached;
  return model;
}

at::Tensor logits_of(CausalLM& model) {
  torch::NoGradGuard no_grad;
  model.eval();
  ForwardInputs in;
  in.input_ids = to_tensor(kInputIds);
  return model.forward(in);
}

TEST(PeftInterop, QtrainAdapterLoadsInPeftWithSameLogits) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  const Reference& ref = reference();
  EXPECT_DOUBLE_EQ(ref.outputs.at("scaling_a").item<double>(), 2.0);  // PEFT read alpha 8, r 4
  auto model = model_with_adapter(ref.base_dir, ref.qtrain_adapter);
  at::Tensor logits = logits_of(*model);
  const at::Tensor& expected = ref.outputs.at("logits_a");
  ASSERT_EQ(logits.sizes(), expected.sizes());
  const double diff = t::max_abs_diff(logits, expected);
  std::cout << "qtrain adapter: max |logits - peft| = " << diff << "\n";
  EXPECT_LE(diff, 1e-4);

  auto base_only = load_causal_lm(ref.base_dir);
  EXPECT_GT(t::max_abs_diff(logits_of(*base_only), expected), 1e-2);  // the adapter matters
}

TEST(PeftInterop, PeftAdapterLoadsInQtrainWithSameLogits) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  const Reference& ref = reference();
  LoadedAdapter loaded = load_peft_adapter(ref.peft_adapter);
  EXPECT_EQ(loaded.config.r, 8);
  EXPECT_DOUBLE_EQ(loaded.config.alpha, 16);
  EXPECT_TRUE(loaded.config.rslora);
  EXPECT_EQ(loaded.tensors.size(), 6u);  // 2 layers x {q_proj, v_proj, down_proj}

  NamedAdapters adapters;
  auto model = model_with_adapter(ref.base_dir, ref.peft_adapter, &adapters);
  auto lora = std::dynamic_pointer_cast<LoraLinear>(adapters.at(0).second);
  EXPECT_DOUBLE_EQ(lora->scaling(), 16 / std::sqrt(8.0));
  at::Tensor logits = logits_of(*model);
  const double diff = t::max_abs_diff(logits, ref.outputs.at("logits_b"));
  std::cout << "peft adapter: max |logits - peft| = " << diff << "\n";
  EXPECT_LE(diff, 1e-4);
}

TEST(PeftInterop, TrainingStepGradientsMatchPeft) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  const Reference& ref = reference();
  NamedAdapters adapters;
  auto model = model_with_adapter(ref.base_dir, ref.qtrain_adapter, &adapters);
  model->train();
  ForwardInputs in;
  in.input_ids = to_tensor(kInputIds);
  at::Tensor logits = model->forward(in);  // [B, T, V]
  const int64_t vocab = logits.size(-1);
  // transformers' causal-LM loss: position t predicts label t+1, mean over non-ignored labels.
  at::Tensor shifted_logits = logits.slice(1, 0, -1).reshape({-1, vocab}).to(at::kFloat);
  at::Tensor shifted_labels = to_tensor(kLabels).slice(1, 1).reshape({-1});
  at::Tensor loss = at::cross_entropy_loss(shifted_logits, shifted_labels, {}, at::Reduction::Mean,
                                           /*ignore_index=*/-100);
  loss.backward();
  EXPECT_NEAR(loss.item<double>(), ref.outputs.at("loss_a").item<double>(), 1e-5);

  size_t compared = 0;
  double worst = 0, worst_relative = 0;
  for (const auto& [module, adapter] : adapters) {
    for (const auto& [name, tensor] : adapter->adapter_tensors()) {
      const std::string key = "grad.base_model.model." + module + "." + name;
      ASSERT_TRUE(ref.outputs.count(key)) << key;
      const at::Tensor& expected = ref.outputs.at(key);
      ASSERT_TRUE(tensor.grad().defined()) << key;
      const double diff = t::max_abs_diff(tensor.grad(), expected);
      const double scale = expected.abs().max().item<double>();
      worst = std::max(worst, diff);
      worst_relative = std::max(worst_relative, diff / scale);
      EXPECT_LE(diff, 1e-5 * std::max(1.0, scale)) << key;
      EXPECT_GT(scale, 0.0) << key;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 28u);  // 2 layers x 7 projections x (A, B)
  std::cout << "gradients: max abs diff " << worst << ", max diff / max |grad| " << worst_relative
            << "\n";
}

}  // namespace
}  // namespace qtrain

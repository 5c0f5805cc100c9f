// LoRA interop with PyPI peft 0.21 on the qtiny Gemma 2, Gemma 3 and Phi-3 models (float32, CPU;
// tests/reference/peft_family_reference.py): qtrain's all-linear adapter wraps exactly the modules
// PEFT wraps (Phi-3's fused qkv_proj and gate_up_proj as they are, never split), loads in
// PeftModel.from_pretrained with the same logits and gives the same loss and LoRA gradients; an
// adapter PEFT creates on the fused names loads in qtrain with the same logits.
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
#include <map>
#include <memory>
#include <set>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

const std::vector<std::vector<int64_t>> kInputIds = {{1, 5, 9, 20, 33, 100, 200, 300, 17, 42},
                                                     {7, 7, 8, 9, 10, 11, 12, 13, 250, 383}};
const std::vector<std::vector<int64_t>> kLabels = {{1, 5, 9, 20, 33, 100, 200, 300, 17, 42},
                                                   {-100, -100, 8, 9, 10, 11, 12, 13, 250, -100}};

at::Tensor to_tensor(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<int64_t> flat;
  for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  return at::tensor(flat, at::kLong).reshape({static_cast<int64_t>(rows.size()), -1});
}

LoraConfig all_linear() {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dtype = at::kFloat;
  c.target_modules = {"all-linear"};
  return c;
}

struct Case {
  std::string arch;
  std::vector<std::string> peft_targets;  // what PEFT's own adapter targets
  std::string base, qtrain_adapter, peft_adapter, out;
  std::map<std::string, at::Tensor> outputs;
  std::set<std::string> peft_wrapped;
};

struct Reference {
  std::unique_ptr<t::ScratchDir> scratch;
  std::vector<Case> cases;
};

const Reference& reference() {
  static std::unique_ptr<Reference> ref;
  if (ref) return *ref;
  ref = std::make_unique<Reference>();
  ref->scratch = std::make_unique<t::ScratchDir>("qtrain-family-adapters");
  ref->cases = {{"gemma2", {"q_proj", "v_proj", "down_proj"}},
                {"gemma3", {"q_proj", "v_proj", "down_proj"}},
                {"phi3", {"qkv_proj", "gate_up_proj", "down_proj"}}};
  nlohmann::json jobs = nlohmann::json::array();
  for (Case& c : ref->cases) {
    c.base = ref->scratch->file(c.arch + "_base");
    c.qtrain_adapter = ref->scratch->file(c.arch + "_qtrain_adapter");
    c.peft_adapter = ref->scratch->file(c.arch + "_peft_adapter");
    c.out = ref->scratch->file(c.arch + "_out.safetensors");
    TinyModelOptions tiny;
    tiny.arch = c.arch;
    tiny.preset = "micro";
    tiny.seed = 3;
    write_tiny_model(tiny, c.base);
    auto model = load_causal_lm(c.base);
    auto adapters = apply_lora(*model, all_linear(), 11);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(12);
    for (const auto& [name, adapter] : adapters) {
      auto lora = std::dynamic_pointer_cast<LoraLinear>(adapter);
      lora->load_adapter_tensor("lora_B.weight", at::randn(lora->lora_B().sizes(), gen) * 0.2);
    }
    save_peft_adapter(c.qtrain_adapter, adapters, all_linear(), c.base);
    jobs.push_back({{"base", c.base},
                    {"qtrain_adapter", c.qtrain_adapter},
                    {"peft_out", c.peft_adapter},
                    {"out", c.out},
                    {"targets", c.peft_targets}});
  }
  t::write_file(ref->scratch->file("inputs.json"),
                nlohmann::json{{"input_ids", kInputIds}, {"labels", kLabels}}.dump());
  t::write_file(ref->scratch->file("cases.json"), jobs.dump());
  std::string log;
  const int rc = t::run_reference_script(
      "peft_family_reference.py",
      {ref->scratch->file("inputs.json"), ref->scratch->file("cases.json")}, &log);
  if (rc != 0) throw std::runtime_error("peft_family_reference.py failed:\n" + log);
  for (Case& c : ref->cases) {
    auto file = SafetensorsFile::open(c.out);
    for (const auto& name : file->names()) c.outputs[name] = file->tensor(name).clone();
    const nlohmann::json listing = nlohmann::json::parse(t::read_file(c.out + ".json"));
    for (const auto& name : listing.at("wrapped")) {
      c.peft_wrapped.insert(name.get<std::string>());
    }
  }
  return *ref;
}

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
  return model.forward({.input_ids = to_tensor(kInputIds)});
}

TEST(FamilyAdapters, QtrainAdapterLoadsInPeftWithSameLogitsLossAndGradients) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  for (const Case& c : reference().cases) {
    SCOPED_TRACE(c.arch);
    NamedAdapters adapters;
    auto model = model_with_adapter(c.base, c.qtrain_adapter, &adapters);
    std::set<std::string> ours;
    for (const auto& [name, adapter] : adapters) ours.insert(name);
    EXPECT_EQ(ours, c.peft_wrapped);
    if (c.arch == "phi3") {
      EXPECT_TRUE(ours.count("model.layers.0.self_attn.qkv_proj"));
      EXPECT_TRUE(ours.count("model.layers.1.mlp.gate_up_proj"));
      EXPECT_EQ(ours.size(), 8u);  // 2 layers x {qkv, o, gate_up, down}
    } else {
      EXPECT_EQ(ours.size(), 14u);  // 2 layers x 7 (gemma3's q/k norms are no linears)
    }

    const double logit_diff = t::max_abs_diff(logits_of(*model), c.outputs.at("logits_a"));
    std::cout << c.arch << " qtrain adapter in peft: max |logit diff| = " << logit_diff << "\n";
    EXPECT_LE(logit_diff, 1e-4);

    model->train();
    at::Tensor logits = model->forward({.input_ids = to_tensor(kInputIds)});
    const int64_t vocab = logits.size(-1);
    at::Tensor loss = at::cross_entropy_loss(logits.slice(1, 0, -1).reshape({-1, vocab}),
                                             to_tensor(kLabels).slice(1, 1).reshape({-1}), {},
                                             at::Reduction::Mean, /*ignore_index=*/-100);
    loss.backward();
    EXPECT_NEAR(loss.item<double>(), c.outputs.at("loss_a").item<double>(), 1e-5);
    double worst = 0;
    size_t compared = 0;
    for (const auto& [module, adapter] : adapters) {
      for (const auto& [name, tensor] : adapter->adapter_tensors()) {
        const std::string key = "grad.base_model.model." + module + "." + name;
        ASSERT_TRUE(c.outputs.count(key)) << key;
        const at::Tensor& expected = c.outputs.at(key);
        const double scale = std::max(1.0, expected.abs().max().item<double>());
        const double diff = t::max_abs_diff(tensor.grad(), expected);
        worst = std::max(worst, diff);
        EXPECT_LE(diff, 1e-5 * scale) << key;
        ++compared;
      }
    }
    EXPECT_EQ(compared, 2 * adapters.size());
    std::cout << c.arch << " LoRA gradients: max |diff| vs peft = " << worst << "\n";
  }
}

TEST(FamilyAdapters, PeftAdapterOnFusedNamesLoadsInQtrainWithSameLogits) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  for (const Case& c : reference().cases) {
    SCOPED_TRACE(c.arch);
    NamedAdapters adapters;
    auto model = model_with_adapter(c.base, c.peft_adapter, &adapters);
    EXPECT_EQ(adapters.size(), 6u);  // 2 layers x 3 targets
    const double diff = t::max_abs_diff(logits_of(*model), c.outputs.at("logits_b"));
    std::cout << c.arch << " peft adapter in qtrain: max |logit diff| = " << diff << "\n";
    EXPECT_LE(diff, 1e-4);
    auto base = load_causal_lm(c.base);
    EXPECT_GT(t::max_abs_diff(logits_of(*base), c.outputs.at("logits_b")), 1e-3);
  }
}

}  // namespace
}  // namespace qtrain

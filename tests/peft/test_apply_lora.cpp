// Target selection by PEFT's rules and apply_lora on a small random decoder: which projections
// get wrapped, freezing, determinism by seed, and that a wrapped model trains only the adapters.
#include "core/error.h"
#include "models/quantized_linear_slot.h"
#include "peft/apply_lora.h"
#include "peft/lora_linear.h"
#include "peft/target_modules.h"
#include "tests/models/random_model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

LoraConfig config_for(std::vector<std::string> targets, std::string regex = "") {
  LoraConfig c;
  c.r = 2;
  c.alpha = 4;
  c.dtype = at::kFloat;
  c.target_modules = std::move(targets);
  c.target_regex = std::move(regex);
  return c;
}

ForwardInputs inputs() {
  ForwardInputs in;
  in.input_ids = at::arange(10, at::kLong).reshape({2, 5}) * 7 % 97;
  return in;
}

TEST(TargetModules, SuffixMatchIsWholeComponents) {
  EXPECT_TRUE(module_matches_suffix("model.layers.0.self_attn.q_proj", "q_proj"));
  EXPECT_TRUE(module_matches_suffix("model.layers.0.self_attn.q_proj", "self_attn.q_proj"));
  EXPECT_TRUE(module_matches_suffix("lm_head", "lm_head"));
  EXPECT_FALSE(module_matches_suffix("model.layers.0.self_attn.q_proj", "proj"));
  EXPECT_FALSE(module_matches_suffix("model.layers.0.self_attn.q_proj", "attn.q_proj"));
  EXPECT_FALSE(module_matches_suffix("q_proj", "model.q_proj"));
}

TEST(TargetModules, AllLinearListAndRegex) {
  auto model = t::random_model(t::small_config("llama"), 1);  // 2 layers
  auto all = select_target_modules(*model, config_for({"all-linear"}));
  EXPECT_EQ(all.size(), 14u);
  EXPECT_EQ(all.front(), "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(all.back(), "model.layers.1.mlp.down_proj");
  EXPECT_EQ(std::count(all.begin(), all.end(), "lm_head"), 0);

  auto qv = select_target_modules(*model, config_for({"q_proj", "v_proj"}));
  const std::vector<std::string> expected_qv = {
      "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
      "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"};
  EXPECT_EQ(qv, expected_qv);

  auto head = select_target_modules(*model, config_for({"lm_head", "model.layers.1.mlp.up_proj"}));
  EXPECT_EQ(head, (std::vector<std::string>{"model.layers.1.mlp.up_proj", "lm_head"}));

  // Full match: "mlp\\..*" alone matches nothing, the whole name must match.
  auto regex = select_target_modules(*model, config_for({}, R"(.*\.1\.mlp\.(gate|up)_proj)"));
  EXPECT_EQ(regex, (std::vector<std::string>{"model.layers.1.mlp.gate_proj",
                                             "model.layers.1.mlp.up_proj"}));
  try {
    select_target_modules(*model, config_for({}, R"(mlp\..*)"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
  }
}

TEST(TargetModules, NoMatchListsTheModelsSuffixes) {
  auto model = t::random_model(t::small_config("llama"), 1);
  try {
    select_target_modules(*model, config_for({"query_key_value"}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.context().field, "target_modules");
    const std::string what = e.what();
    for (const char* s : {"query_key_value", "q_proj", "down_proj", "lm_head"}) {
      EXPECT_NE(what.find(s), std::string::npos) << what;
    }
  }
  try {
    select_target_modules(*model, config_for({}, "(unclosed"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.context().field, "target_regex");
  }
}

TEST(ApplyLora, WrapsTargetsFreezesBaseAndKeepsOutput) {
  auto model = t::random_model(t::small_config("llama"), 2);
  torch::NoGradGuard no_grad_outer;
  at::Tensor before = model->forward(inputs());
  auto adapters = apply_lora(*model, config_for({"q_proj", "down_proj"}), 5);
  ASSERT_EQ(adapters.size(), 4u);
  EXPECT_EQ(adapters[0].first, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(adapters[1].first, "model.layers.0.mlp.down_proj");
  for (const auto& [name, slot] : model->named_linears()) {
    const bool wrapped = std::dynamic_pointer_cast<LoraLinear>(slot) != nullptr;
    EXPECT_EQ(wrapped, name.find("q_proj") != std::string::npos ||
                           name.find("down_proj") != std::string::npos)
        << name;
  }
  // Only the adapters train; the parameter names are PEFT's.
  std::vector<std::string> trainable;
  for (const auto& p : model->named_parameters(true)) {
    if (p.value().requires_grad()) trainable.push_back(p.key());
  }
  EXPECT_EQ(trainable.size(), 8u);
  EXPECT_EQ(trainable[0], "model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(adapter_parameters(adapters).size(), 8u);
  for (const auto& p : adapter_parameters(adapters)) EXPECT_TRUE(p.requires_grad());
  EXPECT_TRUE(at::equal(model->forward(inputs()), before));  // B = 0
}

TEST(ApplyLora, SameSeedSameAdaptersAndGradientsReachOnlyAdapters) {
  auto a = t::random_model(t::small_config("qwen3"), 3);
  auto b = t::random_model(t::small_config("qwen3"), 3);
  auto c = t::random_model(t::small_config("qwen3"), 3);
  auto adapters_a = apply_lora(*a, config_for({"all-linear"}), 9);
  auto adapters_b = apply_lora(*b, config_for({"all-linear"}), 9);
  auto adapters_c = apply_lora(*c, config_for({"all-linear"}), 10);
  auto pa = adapter_parameters(adapters_a), pb = adapter_parameters(adapters_b),
       pc = adapter_parameters(adapters_c);
  ASSERT_EQ(pa.size(), pb.size());
  bool any_differs = false;
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(at::equal(pa[i], pb[i]));
    any_differs |= !at::equal(pa[i], pc[i]);
  }
  EXPECT_TRUE(any_differs);
  // Distinct modules get distinct draws.
  EXPECT_FALSE(at::equal(pa[0], pa[2]));

  at::Tensor logits = a->forward(inputs());
  logits.pow(2).mean().backward();
  for (const auto& p : a->named_parameters(true)) {
    const bool is_adapter = p.key().find(".lora_") != std::string::npos;
    EXPECT_EQ(p.value().requires_grad(), is_adapter) << p.key();
    if (!is_adapter) {
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
    }
  }
  for (size_t i = 0; i < pa.size(); i += 2) {  // B = 0, so only B gets a non-zero gradient
    EXPECT_TRUE(pa[i + 1].grad().defined());
    EXPECT_GT(pa[i + 1].grad().abs().max().item<double>(), 0.0);
  }
}

TEST(ApplyLora, QloraOnQuantizedProjections) {
  auto model = t::random_model(t::small_config("llama"), 4);
  QuantConfig nf4;
  for (const auto& [name, slot] : model->named_linears()) {
    if (name == "lm_head") continue;
    auto dense = std::dynamic_pointer_cast<DenseLinear>(slot);
    model->replace_linear(name, std::make_shared<QuantizedLinearSlot>(
                                    quantize(dense->weight().detach(), nf4), at::Tensor()));
  }
  auto adapters = apply_lora(*model, config_for({"all-linear"}), 6);
  ASSERT_EQ(adapters.size(), 14u);
  for (const auto& [name, adapter] : adapters) {
    EXPECT_NE(std::dynamic_pointer_cast<QuantizedLinearSlot>(adapter->base()), nullptr) << name;
    auto b = adapter->adapter_tensors()[1];
    adapter->load_adapter_tensor(b.first, at::full(b.second.sizes(), 0.01));
  }
  model->forward(inputs()).pow(2).mean().backward();
  for (const auto& p : adapter_parameters(adapters)) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_GT(p.grad().abs().max().item<double>(), 0.0);
  }
  try {
    adapters[0].second->merge();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
  }
}

TEST(ApplyLora, WrappingTwiceIsRejected) {
  auto model = t::random_model(t::small_config("llama"), 2);
  apply_lora(*model, config_for({"q_proj"}), 1);
  try {
    apply_lora(*model, config_for({"q_proj"}), 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
  }
}

TEST(ApplyLora, AdapterFollowsTheModelsTrainingMode) {
  auto model = t::random_model(t::small_config("llama"), 2);
  model->eval();
  auto adapters = apply_lora(*model, config_for({"v_proj"}), 1);
  EXPECT_FALSE(adapters[0].second->is_training());
  model->train();
  EXPECT_TRUE(adapters[0].second->is_training());
}

}  // namespace
}  // namespace qtrain

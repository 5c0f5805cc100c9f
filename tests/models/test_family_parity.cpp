// Forward parity with transformers for the Gemma 2, Gemma 3 and Phi-3 families: random
// checkpoints written here, loaded by qtrain and by transformers (float32, CPU, eager attention);
// logits must agree within 1e-4 and greedy continuations (KV cache) token for token. Soft caps
// are set low enough that tanh bends the scores and logits, windows short enough that 12-token
// rows exceed them; Gemma 3's two RoPE bases far enough apart (and the full layers' linear
// scaling strong enough) that a layer rotating with the other's frequencies shows.
#include "formats/safetensors/safetensors.h"
#include "models/generate.h"
#include "models/hf_loader.h"
#include "tests/models/random_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <iostream>

namespace qtrain {
namespace {

using nlohmann::json;
namespace t = qtrain::testing;

ModelConfig gemma2_config() {
  ModelConfig c = t::small_config("gemma2");
  c.num_hidden_layers = 3;
  c.head_dim = 16;  // decoupled from hidden / heads, as in every Gemma 2
  c.hidden_act = "gelu_pytorch_tanh";
  c.query_pre_attn_scalar = 24.0;  // a scale that is not head_dim^-0.5
  c.attn_logit_softcapping = 2.0;
  c.final_logit_softcapping = 3.0;
  c.sliding_window = 5;
  c.layer_types = {"sliding_attention", "full_attention", "sliding_attention"};
  c.tie_word_embeddings = true;
  c.rms_norm_eps = 1e-6;
  return c;
}

// Gemma 3 as transformers 4.x spelled it (rope_theta, rope_local_base_freq, rope_scaling) with an
// explicit layer_types list: sliding, full, sliding.
ModelConfig gemma3_config() {
  ModelConfig c = gemma2_config();
  c.model_type = "gemma3_text";
  c.qk_norm = true;
  c.attn_logit_softcapping.reset();
  c.final_logit_softcapping.reset();
  c.rope_theta = 1e6;
  c.rope_scaling = {.type = RopeType::kLinear, .factor = 8.0};
  c.local_rope_theta = 100.0;
  return c;
}

ModelConfig phi3_config(bool window) {
  ModelConfig c = t::small_config("phi3");
  c.tie_word_embeddings = false;
  if (window) c.sliding_window = 5;
  return c;
}

struct Variant {
  std::string label;
  ModelConfig config;
  // Rewrites config.json after to_json (spellings transformers reads that to_json does not write).
  std::function<void(json&)> edit_config;
};

// Gemma 3's other spellings: the layer pattern as sliding_window_pattern (every 3rd layer full:
// sliding, sliding, full, sliding), the RoPE as transformers 5's per-layer-type rope_parameters.
void pattern_and_rope_parameters(json& j) {
  j.erase("layer_types");
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j.erase("rope_local_base_freq");
  j["sliding_window_pattern"] = 3;
  j["rope_parameters"] = {
      {"full_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}},
      {"sliding_attention", {{"rope_type", "linear"}, {"factor", 4.0}, {"rope_theta", 50.0}}}};
}

std::vector<Variant> variants() {
  std::vector<Variant> out;
  out.push_back({"gemma2_softcapped_alternating", gemma2_config()});
  {
    Variant v{"gemma2_uncapped_mha", gemma2_config()};
    v.config.num_key_value_heads = 4;
    v.config.attn_logit_softcapping.reset();
    v.config.final_logit_softcapping.reset();
    out.push_back(v);
  }
  out.push_back({"gemma3_layer_types_linear_rope", gemma3_config()});
  {
    Variant v{"gemma3_pattern_rope_parameters_final_cap_untied", gemma3_config()};
    v.config.num_hidden_layers = 4;
    v.config.layer_types.clear();  // config.json gives sliding_window_pattern instead
    v.config.num_key_value_heads = 4;
    v.config.tie_word_embeddings = false;
    // Written to config.json, where transformers' Gemma 3 (and so qtrain) ignores it.
    v.config.attn_logit_softcapping = 2.0;
    v.config.final_logit_softcapping = 3.0;
    v.edit_config = pattern_and_rope_parameters;
    out.push_back(v);
  }
  out.push_back({"phi3_gqa", phi3_config(false)});
  {
    Variant v{"phi3_window_mha", phi3_config(true)};
    v.config.num_key_value_heads = 4;
    out.push_back(v);
  }
  return out;
}

void write_model_dir(const CausalLM& model, const std::string& dir,
                     const std::function<void(json&)>& edit_config = {}) {
  std::filesystem::create_directories(dir);
  json config = model.config().to_json();
  if (edit_config) edit_config(config);
  t::write_file(dir + "/config.json", config.dump(2));
  NamedTensors tensors;
  for (const auto& item : model.named_parameters(true)) {
    if (model.config().tie_word_embeddings && item.key() == "lm_head.weight") continue;
    tensors.emplace_back(item.key(), item.value().detach());
  }
  write_checkpoint(dir, tensors, ShardOptions{});
}

TEST(FamilyParityTest, GemmaAndPhi3LogitsAndGreedyTokensMatchTransformers) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  const std::vector<std::vector<int64_t>> input_ids = {
      {1, 5, 17, 3, 88, 42, 7, 7, 60, 2, 95, 31}, {1, 90, 12, 12, 44, 0, 63, 8, 21, 77, 50, 9}};
  const std::vector<int64_t> prompt = {1, 33, 14, 15};
  const int64_t new_tokens = 8;
  t::ScratchDir scratch("qtrain-family-parity");
  t::write_file(
      scratch.file("inputs.json"),
      json{{"input_ids", input_ids}, {"generate_prompt", prompt}, {"max_new_tokens", new_tokens}}
          .dump());
  std::vector<std::string> dirs;
  for (const Variant& v : variants()) {
    auto model = t::random_model(v.config, 4321);
    dirs.push_back(scratch.file(v.label));
    write_model_dir(*model, dirs.back(), v.edit_config);
  }
  std::vector<std::string> args = {scratch.file("inputs.json")};
  args.insert(args.end(), dirs.begin(), dirs.end());
  std::string output;
  ASSERT_EQ(t::run_reference_script("hf_logits.py", args, &output), 0) << output;

  at::Tensor ids = at::empty({2, 12}, at::kLong);
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t c = 0; c < 12; ++c) ids[r][c] = input_ids[r][c];
  const std::vector<std::string> classes = {"Gemma2ForCausalLM", "Gemma2ForCausalLM",
                                            "Gemma3ForCausalLM", "Gemma3ForCausalLM",
                                            "Phi3ForCausalLM",   "Phi3ForCausalLM"};
  for (size_t i = 0; i < dirs.size(); ++i) {
    SCOPED_TRACE(variants()[i].label);
    auto loaded = load_causal_lm(dirs[i]);
    at::Tensor ours;
    {
      torch::NoGradGuard no_grad;
      ours = loaded->forward({.input_ids = ids});
    }
    at::Tensor theirs =
        CheckpointReader::open_file(dirs[i] + "/ref_logits.safetensors").tensor("logits");
    ASSERT_EQ(ours.sizes(), theirs.sizes());
    const double diff = t::max_abs_diff(ours, theirs);
    EXPECT_LE(diff, 1e-4) << "max |logit difference|";
    std::cout << variants()[i].label << ": max |logit diff| vs transformers = " << diff << "\n";
    EXPECT_GT(theirs.abs().max().item<double>(), 0.1);

    json reference = json::parse(t::read_file(dirs[i] + "/ref.json"));
    EXPECT_EQ(reference["model_class"], classes[i]);
    GenerateOptions greedy{.max_new_tokens = new_tokens};
    EXPECT_EQ(generate(*loaded, prompt, greedy),
              reference["generated"].get<std::vector<int64_t>>());
  }
}

}  // namespace
}  // namespace qtrain

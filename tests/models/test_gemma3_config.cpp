// Gemma 3 config.json -> ModelConfig: Gemma3TextConfig's defaults, the layer pattern in both
// spellings (layer_types, sliding_window_pattern), the two RoPEs in both spellings (rope_theta +
// rope_local_base_freq + rope_scaling, transformers 5's rope_parameters per layer type), the
// gemma3 wrapper config read through its text_config, and the errors that name the field.
#include "core/error.h"
#include "models/config.h"
#include "models/hf_names.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <set>

namespace qtrain {
namespace {

using nlohmann::json;

const std::string kSliding = "sliding_attention";
const std::string kFull = "full_attention";

json base() {
  return {{"model_type", "gemma3_text"}, {"vocab_size", 100},      {"hidden_size", 64},
          {"intermediate_size", 128},    {"num_hidden_layers", 8}, {"num_attention_heads", 4},
          {"num_key_value_heads", 1}};
}

// The shape of google/gemma-3-1b-it's config.json (transformers 4.50 wrote it).
json gemma3_1b() {
  return json::parse(R"({
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "attn_logit_softcapping": null, "bos_token_id": 2, "cache_implementation": "hybrid",
    "eos_token_id": [1, 106], "final_logit_softcapping": null, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02,
    "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
    "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000, "rope_scaling": null, "rope_theta": 1000000,
    "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
    "use_cache": true, "vocab_size": 262144})");
}

Error error_of(const json& j) {
  try {
    ModelConfig::from_json(j, "m/config.json");
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected an error for " << j.dump();
  return Error(ErrorKind::kInternal, "no error");
}

TEST(Gemma3Config, Gemma3TextConfigDefaults) {
  const ModelConfig c = ModelConfig::from_json(base());
  EXPECT_TRUE(c.gemma_style());
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.hidden_act, "gelu_pytorch_tanh");
  EXPECT_EQ(c.query_pre_attn_scalar, 256.0);
  EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / 16.0);
  EXPECT_FALSE(c.attn_logit_softcapping.has_value());
  EXPECT_FALSE(c.final_logit_softcapping.has_value());
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.local_rope_theta, 1e4);
  EXPECT_EQ(c.rope_scaling.type, RopeType::kDefault);
  EXPECT_EQ(c.local_rope_scaling.type, RopeType::kDefault);
  // sliding_window_pattern 6: layers 5, 11, ... attend to everything.
  const std::vector<std::string> expected = {kSliding, kSliding, kSliding, kSliding,
                                             kSliding, kFull,    kSliding, kSliding};
  EXPECT_EQ(c.layer_types, expected);
  for (int64_t i = 0; i < 8; ++i) {
    EXPECT_EQ(c.layer_slides(i), i != 5) << i;
    EXPECT_EQ(c.layer_uses_local_rope(i), i != 5) << i;
  }
}

TEST(Gemma3Config, ReleasedOneBillionShape) {
  const ModelConfig c = ModelConfig::from_json(gemma3_1b());
  EXPECT_EQ(c.num_hidden_layers, 26);
  EXPECT_EQ(c.sliding_window, 512);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{1, 106}));
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  std::vector<int64_t> full;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (!c.layer_slides(i)) full.push_back(i);
  }
  EXPECT_EQ(full, (std::vector<int64_t>{5, 11, 17, 23}));
  // Tensors: q/k norms over head_dim and four (1 + w) norms per layer, tied lm_head.
  std::set<std::string> names;
  for (const TensorSpec& spec : hf_tensor_specs(c)) {
    names.insert(spec.name);
    if (spec.name == "model.layers.0.self_attn.q_norm.weight") {
      EXPECT_EQ(spec.shape, std::vector<int64_t>{256});
    }
  }
  for (const char* name :
       {"model.layers.3.self_attn.q_norm.weight", "model.layers.3.self_attn.k_norm.weight",
        "model.layers.3.pre_feedforward_layernorm.weight",
        "model.layers.3.post_feedforward_layernorm.weight"}) {
    EXPECT_TRUE(names.count(name)) << name;
  }
  EXPECT_FALSE(names.count("lm_head.weight"));
  EXPECT_EQ(names.size(), 1 + 26 * 13 + 1);
}

TEST(Gemma3Config, LinearScalingAppliesToFullLayersOnly) {
  json legacy = base();  // Gemma 3 4B's text model: rope_scaling linear 8
  legacy["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}};
  legacy["rope_local_base_freq"] = 20000;
  legacy["rope_theta"] = 5e5;
  const ModelConfig a = ModelConfig::from_json(legacy);
  EXPECT_EQ(a.rope_scaling.type, RopeType::kLinear);
  EXPECT_EQ(a.rope_scaling.factor, 8.0);
  EXPECT_EQ(a.rope_theta, 5e5);
  EXPECT_EQ(a.local_rope_scaling.type, RopeType::kDefault);
  EXPECT_EQ(a.local_rope_theta, 20000.0);

  json nested = base();  // what transformers 5 writes for the same model
  nested["rope_parameters"] = {
      {"full_attention", {{"rope_type", "linear"}, {"factor", 8.0}, {"rope_theta", 5e5}}},
      {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 20000.0}}}};
  const ModelConfig b = ModelConfig::from_json(nested);
  EXPECT_EQ(b.rope_scaling.type, RopeType::kLinear);
  EXPECT_EQ(b.rope_scaling.factor, 8.0);
  EXPECT_EQ(b.rope_theta, 5e5);
  EXPECT_EQ(b.local_rope_scaling.type, RopeType::kDefault);
  EXPECT_EQ(b.local_rope_theta, 20000.0);

  // A layer type left out of rope_parameters takes the flat keys or Gemma3TextConfig's default.
  json partial = base();
  partial["rope_parameters"] = {{"sliding_attention", {{"rope_theta", 50.0}}}};
  const ModelConfig p = ModelConfig::from_json(partial);
  EXPECT_EQ(p.rope_theta, 1e6);
  EXPECT_EQ(p.local_rope_theta, 50.0);
}

TEST(Gemma3Config, LayerTypesWinOverThePattern) {
  json j = base();
  j["num_hidden_layers"] = 3;
  j["sliding_window_pattern"] = 2;
  EXPECT_EQ(ModelConfig::from_json(j).layer_types,
            (std::vector<std::string>{kSliding, kFull, kSliding}));
  j["layer_types"] = {kFull, kFull, kSliding};
  EXPECT_EQ(ModelConfig::from_json(j).layer_types,
            (std::vector<std::string>{kFull, kFull, kSliding}));
}

TEST(Gemma3Config, FinalSoftCapKeptAttentionSoftCapDropped) {
  json j = base();
  j["final_logit_softcapping"] = 30.0;
  j["attn_logit_softcapping"] = 50.0;  // transformers' Gemma 3 never applies it
  const ModelConfig c = ModelConfig::from_json(j);
  EXPECT_EQ(c.final_logit_softcapping, 30.0);
  EXPECT_FALSE(c.attn_logit_softcapping.has_value());
}

TEST(Gemma3Config, ToJsonRoundTrips) {
  json j = base();
  j["num_hidden_layers"] = 4;
  j["layer_types"] = {kSliding, kFull, kFull, kSliding};
  j["sliding_window"] = 7;
  j["query_pre_attn_scalar"] = 24;
  j["final_logit_softcapping"] = 3.0;
  j["tie_word_embeddings"] = false;
  j["rope_parameters"] = {
      {"full_attention", {{"rope_type", "linear"}, {"factor", 8.0}, {"rope_theta", 5e5}}},
      {"sliding_attention", {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 50.0}}}};
  const ModelConfig c = ModelConfig::from_json(j);
  const json written = c.to_json();
  EXPECT_EQ(written["architectures"], json::array({"Gemma3ForCausalLM"}));
  EXPECT_EQ(written["rope_local_base_freq"], 50.0);
  const ModelConfig back = ModelConfig::from_json(written);
  EXPECT_EQ(back.layer_types, c.layer_types);
  EXPECT_EQ(back.sliding_window, 7);
  EXPECT_EQ(back.query_pre_attn_scalar, 24.0);
  EXPECT_EQ(back.final_logit_softcapping, 3.0);
  EXPECT_FALSE(back.attn_logit_softcapping.has_value());
  EXPECT_FALSE(back.tie_word_embeddings);
  EXPECT_EQ(back.rope_theta, 5e5);
  EXPECT_EQ(back.rope_scaling.factor, 8.0);
  EXPECT_EQ(back.local_rope_theta, 50.0);
  EXPECT_EQ(back.local_rope_scaling.type, RopeType::kLinear);
  EXPECT_EQ(back.local_rope_scaling.factor, 2.0);
  // transformers 4.x reads only the flat keys: the same bases and full-layer scaling.
  json flat = written;
  flat.erase("rope_parameters");
  const ModelConfig old = ModelConfig::from_json(flat);
  EXPECT_EQ(old.rope_theta, 5e5);
  EXPECT_EQ(old.rope_scaling.factor, 8.0);
  EXPECT_EQ(old.local_rope_theta, 50.0);
}

TEST(Gemma3Config, WrapperConfigWithoutVisionModelReadsTextConfig) {
  json text = base();
  text.erase("model_type");
  const json wrapper = {
      {"model_type", "gemma3"},    {"architectures", {"Gemma3ForConditionalGeneration"}},
      {"text_config", text},       {"tie_word_embeddings", false},
      {"torch_dtype", "bfloat16"}, {"eos_token_id", json::array({1, 106})}};
  const ModelConfig c = ModelConfig::from_json(wrapper);
  EXPECT_EQ(c.model_type, "gemma3_text");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{1, 106}));
  EXPECT_EQ(c.to_json()["model_type"], "gemma3_text");
}

TEST(Gemma3Config, ErrorsNameConfigJsonAndTheField) {
  struct Case {
    std::function<json()> config;
    ErrorKind kind;
    std::string field;
    std::string words;
  };
  const json text = base();
  const std::vector<Case> cases = {
      {[&] {
         return json{{"model_type", "gemma3"},
                     {"text_config", text},
                     {"vision_config", {{"model_type", "siglip_vision_model"}}}};
       },
       ErrorKind::kUnsupported, "vision_config", "vision-language"},
      {[] {
         return json{{"model_type", "gemma3"}};
       },
       ErrorKind::kConfig, "text_config", "text_config"},
      {[] {
         return json{{"model_type", "gemma3"}, {"text_config", "gemma3_text"}};
       },
       ErrorKind::kConfig, "text_config", "text_config"},
      {[&] {
         json t = text;
         t["model_type"] = "gemma2";
         return json{{"model_type", "gemma3"}, {"text_config", t}};
       },
       ErrorKind::kUnsupported, "text_config.model_type", "gemma2"},
      {[&] {
         json t = text;
         t.erase("hidden_size");
         return json{{"model_type", "gemma3"}, {"text_config", t}};
       },
       ErrorKind::kConfig, "text_config.hidden_size", "missing"},
      {[] {
         json j = base();
         j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
         return j;
       },
       ErrorKind::kConfig, "rope_parameters", "per layer type"},
      {[] {
         json j = base();
         j["rope_parameters"] = {{"sliding_attention", {{"rope_type", "yarn"}, {"factor", 2.0}}}};
         return j;
       },
       ErrorKind::kUnsupported, "rope_parameters.sliding_attention", "yarn"},
      {[] {
         json j = base();
         j["rope_scaling"] = 8;
         return j;
       },
       ErrorKind::kConfig, "rope_scaling", "expected an object"},
      {[] {
         json j = base();
         j["sliding_window_pattern"] = 0;
         return j;
       },
       ErrorKind::kConfig, "sliding_window_pattern", "positive"},
      {[] {
         json j = base();
         j["rope_local_base_freq"] = -1.0;
         return j;
       },
       ErrorKind::kConfig, "rope_local_base_freq", "positive"},
      {[] {
         json j = base();
         j["layer_types"] = {kSliding, kFull};
         return j;
       },
       ErrorKind::kConfig, "layer_types", "2 entries for 8 layers"},
      {[] {
         json j = base();
         j["use_bidirectional_attention"] = true;
         return j;
       },
       ErrorKind::kUnsupported, "use_bidirectional_attention", "bidirectional"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    const Error e = error_of(cases[i].config());
    EXPECT_EQ(e.kind(), cases[i].kind) << e.what();
    EXPECT_EQ(e.context().file, "m/config.json");
    EXPECT_EQ(e.context().field, cases[i].field) << e.what();
    EXPECT_NE(std::string(e.what()).find(cases[i].words), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qtrain

// config.json -> ModelConfig: both rope spellings, the per-family defaults, and errors that name
// the field.
#include "core/error.h"
#include "models/config.h"
#include "models/hf_names.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace qtrain {
namespace {

using nlohmann::json;

json base(const std::string& type) {
  return {{"model_type", type},       {"vocab_size", 100},      {"hidden_size", 64},
          {"intermediate_size", 128}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}};
}

ErrorKind kind_of(const json& j, std::string* message = nullptr) {
  try {
    ModelConfig::from_json(j, "cfg.json");
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.kind();
  }
  ADD_FAILURE() << "expected an error for " << j.dump();
  return ErrorKind::kInternal;
}

TEST(ModelConfigTest, LlamaDefaults) {
  ModelConfig c = ModelConfig::from_json(base("llama"));
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.has_qkv_bias());
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.rope_scaling.type, RopeType::kDefault);
}

TEST(ModelConfigTest, FamilySpecifics) {
  ModelConfig qwen2 = ModelConfig::from_json(base("qwen2"));
  EXPECT_TRUE(qwen2.has_qkv_bias());
  EXPECT_FALSE(qwen2.has_o_bias());
  json q3 = base("qwen3");
  ModelConfig qwen3 = ModelConfig::from_json(q3);
  EXPECT_TRUE(qwen3.qk_norm);
  EXPECT_EQ(qwen3.head_dim, 128);  // Qwen3's default, not hidden / heads
  json mistral = base("mistral");
  mistral["sliding_window"] = 4096;
  EXPECT_EQ(ModelConfig::from_json(mistral).sliding_window.value(), 4096);
  json llama = base("llama");
  llama["attention_bias"] = true;
  EXPECT_TRUE(ModelConfig::from_json(llama).has_o_bias());
}

TEST(ModelConfigTest, Llama3RopeInBothSpellings) {
  json legacy = base("llama");
  legacy["rope_theta"] = 500000.0;
  legacy["rope_scaling"] = {{"type", "llama3"},
                            {"factor", 8.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 8192}};
  json v5 = base("llama");
  v5["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 500000.0},
                           {"factor", 8.0},           {"low_freq_factor", 1.0},
                           {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  for (const json& j : {legacy, v5}) {
    ModelConfig c = ModelConfig::from_json(j);
    EXPECT_EQ(c.rope_scaling.type, RopeType::kLlama3);
    EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
    EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  }
  json defaults = base("llama");
  defaults["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  EXPECT_DOUBLE_EQ(ModelConfig::from_json(defaults).rope_theta, 1e6);
}

TEST(ModelConfigTest, EosAsListOrScalar) {
  json j = base("llama");
  j["eos_token_id"] = {128001, 128009};
  EXPECT_EQ(ModelConfig::from_json(j).eos_token_ids, (std::vector<int64_t>{128001, 128009}));
  j["eos_token_id"] = 2;
  EXPECT_EQ(ModelConfig::from_json(j).eos_token_ids, (std::vector<int64_t>{2}));
}

TEST(ModelConfigTest, ToJsonRoundTrips) {
  json j = base("qwen3");
  j["num_key_value_heads"] = 2;
  j["head_dim"] = 32;
  j["tie_word_embeddings"] = true;
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  ModelConfig c = ModelConfig::from_json(j);
  ModelConfig again = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(again.to_json(), c.to_json());
  EXPECT_EQ(again.rope_scaling.type, RopeType::kLinear);
  EXPECT_EQ(again.head_dim, 32);
}

TEST(ModelConfigTest, ErrorsNameTheField) {
  std::string message;
  json missing = base("llama");
  missing.erase("hidden_size");
  EXPECT_EQ(kind_of(missing, &message), ErrorKind::kConfig);
  EXPECT_NE(message.find("hidden_size"), std::string::npos) << message;
  EXPECT_NE(message.find("cfg.json"), std::string::npos) << message;

  json wrong_type = base("llama");
  wrong_type["num_hidden_layers"] = "two";
  EXPECT_EQ(kind_of(wrong_type, &message), ErrorKind::kConfig);
  EXPECT_NE(message.find("num_hidden_layers"), std::string::npos) << message;

  json bad_gqa = base("llama");
  bad_gqa["num_key_value_heads"] = 3;
  EXPECT_EQ(kind_of(bad_gqa, &message), ErrorKind::kConfig);
  EXPECT_NE(message.find("num_key_value_heads"), std::string::npos) << message;

  json negative = base("llama");
  negative["vocab_size"] = -5;
  EXPECT_EQ(kind_of(negative, &message), ErrorKind::kConfig);

  json unknown_model = base("gpt2");
  EXPECT_EQ(kind_of(unknown_model, &message), ErrorKind::kUnsupported);
  EXPECT_NE(message.find("gpt2"), std::string::npos) << message;

  json yarn = base("llama");
  yarn["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_EQ(kind_of(yarn, &message), ErrorKind::kUnsupported);
  EXPECT_NE(message.find("rope_scaling"), std::string::npos) << message;

  json string_type = base("llama");
  string_type["model_type"] = 7;
  EXPECT_EQ(kind_of(string_type, &message), ErrorKind::kConfig);
  json nested = base("llama");
  nested["rope_scaling"] = {{"rope_type", 3}};
  EXPECT_EQ(kind_of(nested, &message), ErrorKind::kConfig);

  json gelu = base("llama");
  gelu["hidden_act"] = "gelu";
  EXPECT_EQ(kind_of(gelu, &message), ErrorKind::kUnsupported);
}

// Sizes whose tensor specs would not fit memory or whose parameter count overflows int64 are
// refused before anything is built from them.
TEST(ModelConfigTest, RefusesAbsurdSizes) {
  std::string message;
  json layers = base("llama");
  layers["num_hidden_layers"] = 4097;
  EXPECT_EQ(kind_of(layers, &message), ErrorKind::kConfig);
  EXPECT_NE(message.find("field 'num_hidden_layers'"), std::string::npos) << message;
  layers["num_hidden_layers"] = 4096;
  EXPECT_NO_THROW(ModelConfig::from_json(layers, "cfg.json"));

  // Untied 2^28 x 2^20 embeddings and lm_head: 2^49, plus 2^43 of attention and 3 * 2^20 * 128
  // of MLP in each of two layers.
  json wide = base("llama");
  wide["vocab_size"] = int64_t{1} << 28;
  wide["hidden_size"] = int64_t{1} << 20;
  EXPECT_EQ(kind_of(wide, &message), ErrorKind::kConfig);
  EXPECT_NE(message.find("about 5.72e+14 parameters, more than 2^48"), std::string::npos)
      << message;
  wide["tie_word_embeddings"] = true;  // 2^48 + 2^43 + ...
  EXPECT_EQ(kind_of(wide, &message), ErrorKind::kConfig);
  wide["vocab_size"] = int64_t{1} << 27;  // 2^47 + 2^43 + ...
  EXPECT_NO_THROW(ModelConfig::from_json(wide, "cfg.json"));

  json huge = base("llama");
  huge["intermediate_size"] = int64_t{1} << 62;
  EXPECT_EQ(kind_of(huge, &message), ErrorKind::kConfig);
  EXPECT_NE(message.find("cfg.json"), std::string::npos) << message;
}

TEST(ModelConfigTest, FileErrors) {
  try {
    ModelConfig::from_file("/nonexistent/config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/config.json"), std::string::npos);
  }
}

TEST(HfNamesTest, TensorCountsAndShapes) {
  json j = base("qwen3");
  j["num_key_value_heads"] = 2;
  j["head_dim"] = 32;
  j["tie_word_embeddings"] = true;
  ModelConfig c = ModelConfig::from_json(j);
  auto specs = hf_tensor_specs(c);
  // embed + norm + per layer (q,k,v biasless 4 projections + q/k norm + 3 mlp + 2 norms)
  EXPECT_EQ(specs.size(), 2u + 2u * 11u);
  EXPECT_EQ(specs.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(specs[1].name, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(specs[1].shape, (std::vector<int64_t>{4 * 32, 64}));
  EXPECT_EQ(specs[2].shape, (std::vector<int64_t>{2 * 32, 64}));
  EXPECT_EQ(specs.back().name, "model.norm.weight");
  c.model_type = "qwen2";
  c.qk_norm = false;
  c.tie_word_embeddings = false;
  specs = hf_tensor_specs(c);
  EXPECT_EQ(specs.back().name, "lm_head.weight");
  EXPECT_EQ(specs[2].name, "model.layers.0.self_attn.q_proj.bias");
}

}  // namespace
}  // namespace qtrain

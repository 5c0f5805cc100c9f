#include "trainer/recipe/known_models.h"

#include "core/error.h"

#include <nlohmann/json.hpp>

#include <map>

namespace qtrain {
namespace {

using nlohmann::json;

// The fields of each model's config.json that ModelConfig reads, as published on the Hub.
const std::map<std::string, json>& known_configs() {
  static const std::map<std::string, json> kConfigs = [] {
    const json llama2 = {
        {"model_type", "llama"}, {"vocab_size", 32000},      {"max_position_embeddings", 4096},
        {"rms_norm_eps", 1e-5},  {"rope_theta", 10000.0},    {"bos_token_id", 1},
        {"eos_token_id", 2},     {"torch_dtype", "float16"}, {"tie_word_embeddings", false}};
    const json llama3 = {
        {"model_type", "llama"},  {"vocab_size", 128256},      {"max_position_embeddings", 8192},
        {"rms_norm_eps", 1e-5},   {"rope_theta", 500000.0},    {"bos_token_id", 128000},
        {"eos_token_id", 128001}, {"torch_dtype", "bfloat16"}, {"tie_word_embeddings", false}};
    auto with = [](json base, int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads,
                   int64_t kv_heads) {
      base["hidden_size"] = hidden;
      base["intermediate_size"] = intermediate;
      base["num_hidden_layers"] = layers;
      base["num_attention_heads"] = heads;
      base["num_key_value_heads"] = kv_heads;
      return base;
    };
    std::map<std::string, json> configs;
    configs["llama2-7b"] = with(llama2, 4096, 11008, 32, 32, 32);
    configs["llama2-13b"] = with(llama2, 5120, 13824, 40, 40, 40);
    configs["llama2-70b"] = with(llama2, 8192, 28672, 80, 64, 8);
    configs["llama3-8b"] = with(llama3, 4096, 14336, 32, 32, 8);
    configs["llama3-70b"] = with(llama3, 8192, 28672, 80, 64, 8);
    // Mistral-7B-v0.1
    configs["mistral-7b"] = with({{"model_type", "mistral"},
                                  {"vocab_size", 32000},
                                  {"max_position_embeddings", 32768},
                                  {"rms_norm_eps", 1e-5},
                                  {"rope_theta", 10000.0},
                                  {"sliding_window", 4096},
                                  {"bos_token_id", 1},
                                  {"eos_token_id", 2},
                                  {"torch_dtype", "bfloat16"},
                                  {"tie_word_embeddings", false}},
                                 4096, 14336, 32, 32, 8);
    // Qwen2.5-7B (base); qwen2 always has q/k/v biases
    configs["qwen2.5-7b"] = with({{"model_type", "qwen2"},
                                  {"vocab_size", 152064},
                                  {"max_position_embeddings", 131072},
                                  {"rms_norm_eps", 1e-6},
                                  {"rope_theta", 1000000.0},
                                  {"use_sliding_window", false},
                                  {"bos_token_id", 151643},
                                  {"eos_token_id", 151643},
                                  {"torch_dtype", "bfloat16"},
                                  {"tie_word_embeddings", false}},
                                 3584, 18944, 28, 28, 4);
    return configs;
  }();
  return kConfigs;
}

}  // namespace

const std::vector<std::string>& known_model_names() {
  static const std::vector<std::string> kNames = {"llama2-7b", "llama2-13b", "llama2-70b",
                                                  "llama3-8b", "llama3-70b", "mistral-7b",
                                                  "qwen2.5-7b"};
  return kNames;
}

ModelConfig known_model_config(const std::string& name) {
  const auto it = known_configs().find(name);
  if (it == known_configs().end()) {
    std::string names;
    for (const std::string& n : known_model_names()) names += (names.empty() ? "" : ", ") + n;
    throw_error(ErrorKind::kConfig, "unknown model '" + name + "'; known: " + names,
                {.field = "model.known_config"});
  }
  return ModelConfig::from_json(it->second, "known config " + name);
}

}  // namespace qtrain

// Small random decoders for property tests that need no checkpoint.
#pragma once

#include "models/llama.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <memory>
#include <string>

namespace qtrain::testing {

inline ModelConfig small_config(const std::string& type = "llama", int64_t kv_heads = 2) {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = kv_heads;
  c.head_dim = type == "qwen3" ? 16 : 8;
  c.qk_norm = type == "qwen3";
  c.tie_word_embeddings = type != "llama";
  c.max_position_embeddings = 256;
  return c;
}

// Deterministic random weights: projections ~ N(0, 1/in), norms 1 + N(0, 0.1).
inline void randomize(CausalLM& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& item : model.named_parameters(true)) {
    at::Tensor p = item.value();
    const std::string& name = item.key();
    if (name == "lm_head.weight" && model.config().tie_word_embeddings) continue;
    if (name.find("norm") != std::string::npos) {
      p.normal_(1.0, 0.1, gen);
    } else if (p.dim() == 2) {
      p.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(p.size(1))), gen);
    } else {
      p.normal_(0.0, 0.05, gen);
    }
  }
}

inline std::shared_ptr<CausalLM> random_model(const ModelConfig& config, uint64_t seed,
                                              at::ScalarType dtype = at::kFloat) {
  auto model = std::make_shared<CausalLM>(config, at::TensorOptions().dtype(dtype));
  randomize(*model, seed);
  return model;
}

}  // namespace qtrain::testing

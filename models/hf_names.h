// The tensors of a Hugging Face Llama-family (and Gemma 2/3, Phi-3) checkpoint: names and shapes,
// in the order transformers' state_dict lists them (reference/formats.md §5).
#pragma once

#include "models/config.h"

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

struct TensorSpec {
  std::string name;            // e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // torch shape; Linear weights are [out_features, in_features]
};

// Every tensor the checkpoint for `config` holds. lm_head.weight is absent when the embeddings
// are tied.
std::vector<TensorSpec> hf_tensor_specs(const ModelConfig& config);

// The prefix of decoder layer i: "model.layers.<i>.".
std::string hf_layer_prefix(int64_t layer);

}  // namespace qtrain

// Which linear layers of a model an adapter section targets, with PEFT's matching rules.
#pragma once

#include "models/config.h"
#include "trainer/recipe/recipe.h"

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

struct LinearModule {
  std::string name;  // HF module name, e.g. "model.layers.0.self_attn.q_proj", "lm_head"
  int64_t in_features = 0;
  int64_t out_features = 0;
};

// Every linear layer of `config` (each 2-D weight but the token embeddings), in checkpoint order.
std::vector<LinearModule> linear_modules(const ModelConfig& config);

// PEFT's rules: target_regex must match the whole name; otherwise an entry of target_modules
// matches the name exactly or as its last dotted components ("q_proj", "mlp.down_proj"), and
// "all-linear" matches every linear layer except the output layer lm_head.
bool is_adapter_target(const std::string& module, const AdapterSection& adapter);

// The linear modules of `config` that `adapter` targets.
std::vector<LinearModule> adapter_targets(const ModelConfig& config, const AdapterSection& adapter);

}  // namespace qtrain

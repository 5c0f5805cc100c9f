// Which projections of a model a LoRA config targets, by PEFT's rules.
#pragma once

#include "models/llama.h"
#include "peft/lora_config.h"

#include <string>
#include <vector>

namespace qtrain {

// True when `module` ("model.layers.0.self_attn.q_proj") is named by `entry` exactly or as a
// dotted suffix ("q_proj", "self_attn.q_proj"; "proj" does not match).
bool module_matches_suffix(const std::string& module, const std::string& entry);

// The names of the model's projections (named_linears order) that `config` targets:
// target_regex (when set) must match a whole name (std::regex, ECMAScript); otherwise each
// target_modules entry matches by module_matches_suffix, and {"all-linear"} takes every
// projection except lm_head. Throws Error(kConfig) when nothing matches (listing the model's
// module-name suffixes) or when the regex is invalid.
std::vector<std::string> select_target_modules(const CausalLM& model, const LoraConfig& config);

}  // namespace qtrain

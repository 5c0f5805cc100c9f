// adapter_config.json of an HF PEFT LoRA adapter (reference/formats.md §4) <-> LoraConfig.
#pragma once

#include "peft/lora_config.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace qtrain {

// PEFT's LoraConfig fields for a plain LoRA adapter with inference_mode true. `target_modules`
// is a list of names or a regex string; an empty base model name is written as null.
nlohmann::json peft_config_json(const LoraConfig& config, const nlohmann::json& target_modules,
                                const std::string& base_model_name_or_path);

// Text as PEFT writes it: json.dumps(indent=2, sort_keys=True), ASCII, no trailing newline.
std::string dump_peft_config(const nlohmann::json& config);

// Parses the fields LoRA needs, with PEFT's defaults for missing ones: r, lora_alpha,
// lora_dropout, use_rslora, target_modules (list -> target_modules, "all-linear" ->
// {"all-linear"}, another string -> target_regex, null -> empty list), init_lora_weights
// ("gaussian" or anything else -> kaiming). dtype is left at its default. Errors name `file` and
// the field: Error(kUnsupported) for peft_type other than LORA, a task_type other than
// CAUSAL_LM, use_dora, fan_in_fan_out, bias other than "none", lora_bias, modules_to_save,
// rank_pattern / alpha_pattern, layer_replication, target_parameters, trainable_token_indices;
// Error(kConfig) for ill-typed or out-of-range values. use_qalora is accepted here (the QA-LoRA
// code reads it); plain LoRA attaching rejects it.
LoraConfig lora_config_from_peft_json(const nlohmann::json& config, const std::string& file);

}  // namespace qtrain

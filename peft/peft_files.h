// HF PEFT adapter directories (reference/formats.md §4): adapter_config.json +
// adapter_model.safetensors with keys "base_model.model.<module>.lora_A.weight" [r, in] and
// "...lora_B.weight" [out, r]. PEFT's PeftModel.from_pretrained loads what save_peft_adapter
// writes, and load_peft_adapter reads what PEFT's save_pretrained writes.
#pragma once

#include "models/llama.h"
#include "peft/apply_lora.h"
#include "peft/lora_config.h"

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <nlohmann/json.hpp>

#include <map>
#include <string>

namespace qtrain {

// Writes adapter_model.safetensors (tensors in `file_dtype`, sorted by name, metadata
// {"format": "pt"}) and then adapter_config.json into `dir` (created if missing), each file
// atomically, so an interrupted save never leaves a half-written file. target_modules in the
// config: the regex when config.target_regex is set; else the sorted distinct last name
// components of the wrapped modules ("q_proj", ...), or their full names when the config named
// modules by dotted paths (a suffix list would then select more than was wrapped).
// `extra_config` entries are merged into adapter_config.json last (QA-LoRA adds use_qalora and
// qalora_group_size).
void save_peft_adapter(const std::string& dir, const NamedAdapters& adapters,
                       const LoraConfig& config, const std::string& base_model_name_or_path,
                       at::ScalarType file_dtype = at::kFloat,
                       const nlohmann::json& extra_config = nlohmann::json::object());

struct LoadedAdapter {
  // From adapter_config.json; dtype is the dtype of the file's tensors, target_modules the
  // module names of the file when the config has none.
  LoraConfig config;
  std::string base_model_name_or_path;  // "" when null
  nlohmann::json raw_config;            // the whole adapter_config.json
  std::string weights_file;             // for messages
  // QA-LoRA (adapter_config.json use_qalora / qalora_group_size, checked by load_peft_adapter):
  // the group size is positive when use_qalora is true, 0 otherwise.
  bool use_qalora = false;
  int64_t qalora_group_size = 0;
  // By HF module name ("model.layers.0.self_attn.q_proj"), then PEFT-relative tensor name
  // ("lora_A.weight" [r, in], "lora_B.weight" [out, r]); CPU tensors owned by the map.
  std::map<std::string, std::map<std::string, at::Tensor>> tensors;
};

// Reads an adapter directory. Errors name the file and the field or tensor: Error(kIo) for a
// missing directory or file; Error(kUnsupported) for adapter_model.bin alone ("convert to
// safetensors") and for features listed at lora_config_from_peft_json; Error(kFormat) for bad
// JSON or safetensors; Error(kUnsupported) for a tensor that is not lora_A/lora_B.weight under
// "base_model.model." (DoRA magnitudes, embedding LoRA, ...); Error(kShape) for tensors that
// are not 2-D, whose rank differs from r, or whose partner (A or B) is missing; Error(kFormat)
// for a tensor holding a NaN or an Inf.
LoadedAdapter load_peft_adapter(const std::string& dir);

// Wraps exactly the modules of `adapter` in LoraLinear (in adapter.config.dtype, on the model's
// device), or in QaLoraLinear for a QA-LoRA adapter (use_qalora; qtrain's mean pooling), after
// freezing every model parameter, and loads the tensors. Everything is checked before the model
// changes: Error(kShape) naming the tensor for a module the model lacks or a shape that does not
// fit (an adapter for another model size), Error(kUnsupported) for a module that already carries
// an adapter or a QA-LoRA adapter on a projection that is not int4 with its group size.
NamedAdapters attach_peft_adapter(CausalLM& model, const LoadedAdapter& adapter);

}  // namespace qtrain

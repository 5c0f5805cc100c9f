// Architectures qtrain can plan for without their files: the published Hugging Face config.json
// values of common base models, for --dry-run memory estimates (model.known_config).
#pragma once

#include "models/config.h"

#include <string>
#include <vector>

namespace qtrain {

// llama2-7b, llama2-13b, llama2-70b, llama3-8b, llama3-70b, mistral-7b, qwen2.5-7b
const std::vector<std::string>& known_model_names();

// The config of a known model (Llama-2/3 base, Mistral-7B-v0.1, Qwen2.5-7B base). Throws
// Error(kConfig) listing the known names for any other name.
ModelConfig known_model_config(const std::string& name);

}  // namespace qtrain

// Puts LoRA adapters into a model: freeze everything, wrap the targeted projections.
#pragma once

#include "models/llama.h"
#include "peft/adapter_slot.h"
#include "peft/lora_config.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qtrain {

// Adapters by HF module name, in the model's named_linears() order.
using NamedAdapters = std::vector<std::pair<std::string, std::shared_ptr<AdapterSlot>>>;

// Freezes every parameter of `model`, then wraps each projection that `config` selects
// (select_target_modules) in a LoraLinear through replace_linear. The initial A matrices come
// from one CPU generator seeded with `seed`, drawn module after module in named_linears() order,
// so the same seed, config and model give the same adapter on any device. Throws
// Error(kConfig) for a bad config or no match, Error(kUnsupported) when a selected projection is
// already an adapter.
NamedAdapters apply_lora(CausalLM& model, const LoraConfig& config, uint64_t seed);

// Every adapter's trainable tensors (adapter_tensors() order), for an optimizer.
std::vector<at::Tensor> adapter_parameters(const NamedAdapters& adapters);

}  // namespace qtrain

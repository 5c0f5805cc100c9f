// Puts QA-LoRA adapters into a model whose targeted projections are group-wise INT4
// (load_int4_causal_lm): freeze everything, wrap each target in a QaLoraLinear.
#pragma once

#include "models/llama.h"
#include "peft/apply_lora.h"
#include "peft/lora_config.h"

#include <cstdint>

namespace qtrain {

// Freezes every parameter of `model`, then wraps each projection that `config` selects
// (select_target_modules) in a QaLoraLinear with pooling group `group_size`. The initial A
// matrices come from one CPU generator seeded with `seed`, drawn module after module in
// named_linears() order. Throws Error(kConfig) for a bad config or no match, when a selected
// projection is not an Int4LinearSlot ("qalora needs an int4 base") or when `group_size` differs
// from its quantization group size; nothing is replaced when it throws.
NamedAdapters apply_qalora(CausalLM& model, const LoraConfig& config, int64_t group_size,
                           uint64_t seed);

}  // namespace qtrain

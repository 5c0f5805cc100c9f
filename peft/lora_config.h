// The hyper-parameters of a LoRA adapter, with PEFT's meaning (reference/formats.md §4).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

struct LoraConfig {
  int64_t r = 8;                         // rank
  double alpha = 16;                     // PEFT lora_alpha
  double dropout = 0.0;                  // on the adapter's input, training mode only
  bool rslora = false;                   // scaling alpha/sqrt(r) instead of alpha/r
  at::ScalarType dtype = at::kBFloat16;  // dtype of lora_A / lora_B
  // Module-name suffixes ("q_proj", "mlp.down_proj", a full name), or {"all-linear"}: every
  // projection except lm_head. Ignored when target_regex is set.
  std::vector<std::string> target_modules = {"all-linear"};
  std::string target_regex;      // std::regex that must match a whole module name
  std::string init = "kaiming";  // kaiming | gaussian

  double scaling() const;  // alpha / r, or alpha / sqrt(r) with rslora
  // Throws Error(kConfig) naming the field: r < 1, alpha <= 0, dropout outside [0, 1), unknown
  // init, a non-float dtype, "all-linear" mixed with other entries, no target at all.
  void validate() const;
};

}  // namespace qtrain

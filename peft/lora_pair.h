// The pair of trainable tensors every LoRA flavour holds (lora_A [r, in or in/g], lora_B
// [out, r]) under PEFT's names, and the checked copy that loads a saved one into it.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace qtrain {

std::vector<std::pair<std::string, at::Tensor>> lora_pair_tensors(const at::Tensor& lora_A,
                                                                  const at::Tensor& lora_B);

// Copies `value` into lora_A or lora_B by its PEFT name ("lora_A.weight" / "lora_B.weight").
// Error(kShape) naming the tensor for another name or a shape mismatch (the message ends with
// `mismatch_hint`), Error(kInternal) while `merged`.
void load_lora_pair_tensor(const at::Tensor& lora_A, const at::Tensor& lora_B, bool merged,
                           const std::string& name, const at::Tensor& value,
                           const std::string& mismatch_hint);

}  // namespace qtrain

#include "peft/lora_pair.h"

#include "core/error.h"
#include "core/shape_string.h"

#include <c10/core/GradMode.h>

namespace qtrain {

std::vector<std::pair<std::string, at::Tensor>> lora_pair_tensors(const at::Tensor& lora_A,
                                                                  const at::Tensor& lora_B) {
  return {{"lora_A.weight", lora_A}, {"lora_B.weight", lora_B}};
}

void load_lora_pair_tensor(const at::Tensor& lora_A, const at::Tensor& lora_B, bool merged,
                           const std::string& name, const at::Tensor& value,
                           const std::string& mismatch_hint) {
  at::Tensor target;
  if (name == "lora_A.weight") {
    target = lora_A;
  } else if (name == "lora_B.weight") {
    target = lora_B;
  } else {
    throw_error(ErrorKind::kShape, "not a LoRA tensor (expected lora_A.weight or lora_B.weight)",
                {.tensor = name});
  }
  if (merged) {
    throw_error(ErrorKind::kInternal, "cannot load an adapter tensor while merged; unmerge first",
                {.tensor = name});
  }
  if (value.sizes() != target.sizes()) {
    throw_error(ErrorKind::kShape,
                "shape " + shape_string(value.sizes()) + " does not fit this module's " +
                    shape_string(target.sizes()) + " (" + mismatch_hint + ")",
                {.tensor = name});
  }
  at::NoGradGuard no_grad;
  target.copy_(value);
}

}  // namespace qtrain

#include "models/int4_linear_slot.h"

#include "core/error.h"

namespace qtrain {

Int4LinearSlot::Int4LinearSlot(Int4GroupTensor weight, at::Tensor bias)
    : weight_(std::make_shared<Int4GroupTensor>(std::move(weight))) {
  if (weight_->shape.size() != 2) {
    throw_error(ErrorKind::kShape, "an int4 linear weight must be 2-D [out, in]");
  }
  if (bias.defined()) {
    if (bias.dim() != 1 || bias.size(0) != weight_->shape[0]) {
      throw_error(ErrorKind::kShape,
                  "int4 linear bias must be [" + std::to_string(weight_->shape[0]) + "]");
    }
    bias_ = register_buffer("bias", bias.detach());  // frozen with the base: a buffer
  }
}

at::Tensor Int4LinearSlot::forward(const at::Tensor& x) {
  return int4_group_linear(x, weight_, bias_);
}

}  // namespace qtrain

#include "models/int4_linear_slot.h"

#include "core/error.h"
#include "quant/dequantize_rows.h"

#include <utility>

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
  // Computed in float32 for every dtype, float64 included, as int4_group_linear does.
  DenseRowsFn rows = [weight = weight_](int64_t begin, int64_t end, at::ScalarType dtype) {
    return dequantize_rows(*weight, begin, end, dtype);
  };
  return frozen_linear(x, {std::move(rows), out_features(), in_features(), max_slice_elements_},
                       bias_);
}

}  // namespace qtrain

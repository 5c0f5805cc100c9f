#include "models/quantized_linear_slot.h"

#include "core/error.h"
#include "quant/dequantize_rows.h"

#include <utility>

namespace qtrain {

QuantizedLinearSlot::QuantizedLinearSlot(QuantizedTensor weight, at::Tensor bias)
    : weight_(std::make_shared<const QuantizedTensor>(std::move(weight))) {
  if (weight_->shape.size() != 2) {
    throw_error(ErrorKind::kShape, "a quantized linear weight must be 2-D [out, in]");
  }
  if (bias.defined()) {
    bias_ = register_buffer("bias", bias.detach());  // frozen with the base: a buffer
  }
}

at::Tensor QuantizedLinearSlot::forward(const at::Tensor& x) {
  // float64 (gradient checks) goes through float32, as quantized_linear does.
  DenseRowsFn rows = [weight = weight_](int64_t begin, int64_t end, at::ScalarType dtype) {
    if (dtype == at::kDouble) return dequantize_rows(*weight, begin, end, at::kFloat).to(dtype);
    return dequantize_rows(*weight, begin, end, dtype);
  };
  return frozen_linear(x, {std::move(rows), out_features(), in_features(), max_slice_elements_},
                       bias_);
}

}  // namespace qtrain

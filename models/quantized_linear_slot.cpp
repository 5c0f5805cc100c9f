#include "models/quantized_linear_slot.h"

#include "core/error.h"
#include "quant/quantized_linear.h"

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
  return quantized_linear(x, weight_, bias_);
}

}  // namespace qtrain

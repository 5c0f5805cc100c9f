// y = x W^T + b with W a frozen QuantizedTensor: dequantized on every call (no full-precision
// copy is kept) and multiplied in the activations' dtype. The backward pass returns grad_input
// (and grad_bias when the bias requires grad) and never allocates a weight gradient.
#pragma once

#include "quant/quantized_tensor.h"

#include <ATen/core/Tensor.h>

#include <memory>

namespace qtrain {

// x [..., in], weight shape [out, in], bias [out] or undefined -> [..., out] in x's dtype.
// The weight must outlive the backward pass; it is held by shared_ptr for that reason.
at::Tensor quantized_linear(const at::Tensor& x, std::shared_ptr<const QuantizedTensor> weight,
                            const at::Tensor& bias);

}  // namespace qtrain

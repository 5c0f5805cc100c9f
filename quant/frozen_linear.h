// y = x W^T + b with W frozen and rebuilt on every call (no full-precision copy is kept): the
// autograd function behind quantized_linear (quant/quantized_linear.h) and int4_group_linear
// (quant/int4_group.h). The backward pass returns grad_input only (plus grad_bias through autograd
// when the bias requires grad); no weight gradient exists.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <functional>

namespace qtrain {

// W [out, in] in the requested dtype: x's dtype in the forward pass, the gradient's in the
// backward pass. It is kept in the autograd graph until the backward pass has run, so what it
// captures (the frozen weight, by shared_ptr) stays alive that long.
using DenseWeightFn = std::function<at::Tensor(at::ScalarType)>;

// x [..., in], bias [out] or undefined -> [..., out] in x's dtype. The caller checks the shapes.
at::Tensor frozen_linear(const at::Tensor& x, DenseWeightFn dense_weight, const at::Tensor& bias);

}  // namespace qtrain

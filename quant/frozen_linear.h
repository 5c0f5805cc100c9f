// y = x W^T + b with W frozen and rebuilt on every call (no full-precision copy is kept): the
// autograd function behind the quantized base slots (models/quantized_linear_slot.h,
// models/int4_linear_slot.h), quantized_linear (quant/quantized_linear.h) and int4_group_linear
// (quant/int4_group.h). The backward pass returns grad_input only (plus grad_bias through autograd
// when the bias requires grad); no weight gradient exists.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>

namespace qtrain {

// W [out, in] in the requested dtype: x's dtype in the forward pass, the gradient's in the
// backward pass. It is kept in the autograd graph until the backward pass has run, so what it
// captures (the frozen weight, by shared_ptr) stays alive that long.
using DenseWeightFn = std::function<at::Tensor(at::ScalarType)>;

// x [..., in], bias [out] or undefined -> [..., out] in x's dtype. The caller checks the shapes.
at::Tensor frozen_linear(const at::Tensor& x, DenseWeightFn dense_weight, const at::Tensor& bias);

// Rows [row_begin, row_end) of W: [row_end - row_begin, in] in the requested dtype, the same
// values the whole weight holds there. Captured like DenseWeightFn.
using DenseRowsFn = std::function<at::Tensor(int64_t row_begin, int64_t row_end, at::ScalarType)>;

// The most weight elements dequantized at once by the sliced path: 2^26 = 64 Mi elements, 128 MiB
// of bf16 rows (Llama-3-70B's 128256 x 8192 lm_head goes in 16 slices of at most 8192 rows
// instead of one 1.96 GiB temporary). A slice holds at least one row, so a row wider than the
// bound is the one exception.
inline constexpr int64_t kFrozenSliceElements = int64_t{1} << 26;

struct FrozenWeight {
  DenseRowsFn rows;
  int64_t out_features = 0;
  int64_t in_features = 0;
  // A weight of at most this many elements is dequantized whole (one matmul, the numbers of the
  // DenseWeightFn overload); a larger one in slices of whole rows, each at most this many
  // elements. Tests lower it to exercise the sliced path on tiny weights.
  int64_t max_slice_elements = kFrozenSliceElements;
};

// x [..., in], bias [out] or undefined -> [..., out] in x's dtype. Sliced, the forward pass writes
// y[:, rows] = x W[rows]^T into its output and the backward pass accumulates
// grad_x = sum over slices grad_y[:, rows] W[rows] in the gradient's dtype (one rounding per
// slice). Throws Error(kShape) when x's last dimension is not in_features.
at::Tensor frozen_linear(const at::Tensor& x, FrozenWeight weight, const at::Tensor& bias);

}  // namespace qtrain

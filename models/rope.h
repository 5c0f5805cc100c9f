// Rotary position embeddings in HF's rotate-half (NeoX) convention: element j of a head pairs
// with element j + head_dim/2 (reference/formats.md §5), with default, linear and llama3
// frequency scaling.
#pragma once

#include "models/config.h"

#include <ATen/core/Tensor.h>

#include <utility>

namespace qtrain {

// inv_freq [head_dim/2] float32, computed with the same float32 ops transformers uses.
at::Tensor rope_inverse_frequencies(int64_t head_dim, double theta, const RopeScaling& scaling);

// position_ids [B, T] (int64) -> (cos, sin), each [B, T, head_dim] in `dtype`.
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq,
                                               const at::Tensor& position_ids,
                                               at::ScalarType dtype);

// x [..., d] -> cat(-x[..., d/2:], x[..., :d/2])
at::Tensor rotate_half(const at::Tensor& x);

// x [B, H, T, head_dim], cos/sin [B, T, head_dim] -> x * cos + rotate_half(x) * sin
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace qtrain

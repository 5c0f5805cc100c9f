// Rotary position embeddings in HF's rotate-half (NeoX) convention: element j of a head pairs
// with element j + head_dim/2 (reference/formats.md §5), with default, linear and llama3
// frequency scaling.
#pragma once

#include "models/config.h"

#include <ATen/core/Tensor.h>

#include <mutex>
#include <utility>
#include <vector>

namespace qtrain {

// inv_freq [head_dim/2] float32, computed with the same float32 ops transformers uses.
at::Tensor rope_inverse_frequencies(int64_t head_dim, double theta, const RopeScaling& scaling);

// inv_freq on every device that asks for it: computed once on the CPU, copied once per device
// (never per forward pass).
class RopeFrequencies {
 public:
  explicit RopeFrequencies(at::Tensor inv_freq_cpu);
  // [head_dim/2] float32 on `device`.
  at::Tensor on(const at::Device& device);

 private:
  std::mutex mutex_;
  std::vector<at::Tensor> copies_;  // the CPU original first
};

// position_ids [B, T] (int64) -> (cos, sin), each [B, T, head_dim] in `dtype`, computed on the
// device of position_ids (inv_freq is moved there when it lives elsewhere).
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq,
                                               const at::Tensor& position_ids,
                                               at::ScalarType dtype);

// x [..., d] -> cat(-x[..., d/2:], x[..., :d/2])
at::Tensor rotate_half(const at::Tensor& x);

// x [B, H, T, head_dim] (head_axis 1) or [B, T, H, head_dim] (head_axis 2), cos/sin
// [B, T, head_dim] -> x * cos + rotate_half(x) * sin, in the layout of x.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                      int64_t head_axis = 1);

}  // namespace qtrain

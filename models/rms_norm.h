// RMSNorm as HF Llama computes it: normalise in float32, cast back, then scale.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace qtrain {

// x [..., dim] -> [..., dim]; the float32 statistics match transformers' LlamaRMSNorm exactly.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// Gemma's variant, x [..., dim] -> [..., dim]: normalised x times (1 + w), all in float32, cast
// back at the end (transformers' Gemma2RMSNorm), so a zero weight is the identity scale.
at::Tensor unit_offset_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

class RMSNorm : public torch::nn::Module {
 public:
  // unit_offset: Gemma's (1 + w) scale; its weight starts at zeros instead of ones.
  RMSNorm(int64_t dim, double eps, const at::TensorOptions& options, bool unit_offset = false);
  at::Tensor forward(const at::Tensor& x) {
    return unit_offset_ ? unit_offset_rms_norm(x, weight_, eps_) : rms_norm(x, weight_, eps_);
  }
  const at::Tensor& weight() const { return weight_; }
  bool unit_offset() const { return unit_offset_; }

 private:
  at::Tensor weight_;
  double eps_;
  bool unit_offset_ = false;
};

}  // namespace qtrain

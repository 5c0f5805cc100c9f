// RMSNorm as HF Llama computes it: normalise in float32, cast back, then scale.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace qtrain {

// x [..., dim] -> [..., dim]; the float32 statistics match transformers' LlamaRMSNorm exactly.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

class RMSNorm : public torch::nn::Module {
 public:
  RMSNorm(int64_t dim, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) { return rms_norm(x, weight_, eps_); }
  const at::Tensor& weight() const { return weight_; }

 private:
  at::Tensor weight_;
  double eps_;
};

}  // namespace qtrain

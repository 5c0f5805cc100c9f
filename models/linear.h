// A linear slot: the one place a decoder touches a projection. The model holds every projection
// as a LinearSlot, so later layers can swap in a quantized base or wrap it with an adapter
// without the model code knowing which one it holds.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <memory>

namespace qtrain {

class LinearSlot : public torch::nn::Module {
 public:
  // x [..., in_features] -> [..., out_features]
  virtual at::Tensor forward(const at::Tensor& x) = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
};

// y = x W^T + b with W [out, in] and optional b [out], registered as "weight" and "bias".
class DenseLinear : public LinearSlot {
 public:
  DenseLinear(int64_t in_features, int64_t out_features, bool bias,
              const at::TensorOptions& options);
  // Shares an existing weight (tied embeddings): W [out, in].
  explicit DenseLinear(const at::Tensor& shared_weight);

  at::Tensor forward(const at::Tensor& x) override;
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }
  const at::Tensor& weight() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }

 private:
  at::Tensor weight_;
  at::Tensor bias_;
};

}  // namespace qtrain

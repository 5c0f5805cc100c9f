// The frozen quantized base linear as a LinearSlot: the model holds it like any dense slot.
#pragma once

#include "models/linear.h"
#include "quant/quantized_tensor.h"

#include <memory>

namespace qtrain {

class QuantizedLinearSlot : public LinearSlot {
 public:
  // weight shape [out, in]; bias [out] in the compute dtype or undefined. Both stay frozen.
  QuantizedLinearSlot(QuantizedTensor weight, at::Tensor bias);

  at::Tensor forward(const at::Tensor& x) override;  // [..., in] -> [..., out]
  int64_t in_features() const override { return weight_->shape[1]; }
  int64_t out_features() const override { return weight_->shape[0]; }
  const QuantizedTensor& weight() const { return *weight_; }
  const at::Tensor& bias() const { return bias_; }

 private:
  std::shared_ptr<const QuantizedTensor> weight_;
  at::Tensor bias_;
};

}  // namespace qtrain

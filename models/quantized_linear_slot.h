// The frozen quantized base linear as a LinearSlot: the model holds it like any dense slot. Its
// forward and backward passes dequantize the weight in row slices of at most
// kFrozenSliceElements (quant/frozen_linear.h) when it is larger, whole otherwise.
#pragma once

#include "models/linear.h"
#include "quant/frozen_linear.h"
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
  // The dequantized slice bound (elements); tests lower it to slice tiny weights.
  void set_max_slice_elements(int64_t elements) { max_slice_elements_ = elements; }

 private:
  std::shared_ptr<const QuantizedTensor> weight_;
  at::Tensor bias_;
  int64_t max_slice_elements_ = kFrozenSliceElements;
};

}  // namespace qtrain

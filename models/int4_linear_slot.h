// The frozen group-wise INT4 base linear (QA-LoRA's base) as a LinearSlot. Unlike the NF4 slot its
// weight is mutable: a QA-LoRA merge shifts the zero points (never the codes) in place. Like the
// NF4 slot it dequantizes in row slices of at most kFrozenSliceElements (quant/frozen_linear.h).
#pragma once

#include "models/linear.h"
#include "quant/frozen_linear.h"
#include "quant/int4_group.h"

#include <memory>

namespace qtrain {

class Int4LinearSlot : public LinearSlot {
 public:
  // weight shape [out, in]; bias [out] in the compute dtype or undefined. Both stay frozen.
  Int4LinearSlot(Int4GroupTensor weight, at::Tensor bias);

  at::Tensor forward(const at::Tensor& x) override;  // [..., in] -> [..., out]
  int64_t in_features() const override { return weight_->shape[1]; }
  int64_t out_features() const override { return weight_->shape[0]; }
  const Int4GroupTensor& weight() const { return *weight_; }
  // For merges that rewrite the scales or zeros. A graph recorded before the change still holds
  // this same weight, so change it only when no backward pass is pending.
  Int4GroupTensor& mutable_weight() { return *weight_; }
  const at::Tensor& bias() const { return bias_; }
  // The dequantized slice bound (elements); tests lower it to slice tiny weights.
  void set_max_slice_elements(int64_t elements) { max_slice_elements_ = elements; }

 private:
  std::shared_ptr<Int4GroupTensor> weight_;
  at::Tensor bias_;
  int64_t max_slice_elements_ = kFrozenSliceElements;
};

}  // namespace qtrain

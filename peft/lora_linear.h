// LoRA / rsLoRA around any base linear slot (dense or quantized):
//
//   y = base(x) + dropout(x) A^T B^T * scaling        A [r, in], B [out, r]
//
// The base stays frozen; A and B are the trainable parameters, registered so that the module's
// parameter names equal PEFT's without the adapter name: "lora_A.weight", "lora_B.weight", and
// the base's under "base_layer.".
#pragma once

#include "peft/adapter_slot.h"
#include "peft/lora_config.h"

#include <ATen/core/Generator.h>

namespace qtrain {

class LoraLinear : public AdapterSlot {
 public:
  // Wraps `base`, freezing its parameters. A and B are created in config.dtype on the base's
  // device. A is drawn on the CPU from `generator` (a CPU generator, so the values depend only
  // on its seed and the draw order): "kaiming" = kaiming_uniform(a=sqrt(5)), i.e.
  // U(-1/sqrt(in), 1/sqrt(in)); "gaussian" = N(0, std 1/r). B starts at zero, so a fresh adapter
  // leaves the output unchanged. The module starts in the base's training mode.
  LoraLinear(std::shared_ptr<LinearSlot> base, const LoraConfig& config, at::Generator generator);

  // x [..., in] -> [..., out] in the base output's dtype. The adapter path runs in A's dtype:
  // x is cast first, then dropout (at::dropout, so masks come from the global generator and
  // replay under RNG-state restore) in training mode only. A merged adapter adds nothing.
  at::Tensor forward(const at::Tensor& x) override;
  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }

  std::shared_ptr<LinearSlot> base() const override { return base_; }
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override;
  // Throws Error(kShape) for an unknown name or shape, Error(kInternal) while merged.
  void load_adapter_tensor(const std::string& name, const at::Tensor& value) override;

  // W += delta_weight() (merge) or W -= delta_weight() (unmerge), in place in the base's
  // DenseLinear weight, rounded once to W's dtype. After unmerge W equals the original up to
  // that rounding (bit-exact when W's dtype holds the sums exactly). A quantized base cannot
  // change in place: Error(kUnsupported) (exporters dequantize and add delta_weight()).
  // Merging a merged adapter or unmerging an unmerged one is a caller bug: Error(kInternal).
  void merge() override;
  void unmerge() override;
  bool merged() const override { return merged_; }

  // scaling * B @ A: [out, in] float32 (float64 when the adapter is float64), on A's device.
  at::Tensor delta_weight() const;

  const at::Tensor& lora_A() const { return lora_A_; }  // [r, in]
  const at::Tensor& lora_B() const { return lora_B_; }  // [out, r]
  int64_t rank() const { return lora_A_.size(0); }
  double scaling() const { return scaling_; }
  double dropout() const { return dropout_; }

 private:
  at::Tensor dense_base_weight(const char* action) const;  // or Error(kUnsupported)
  void add_delta_to_base(double sign, const char* action);

  std::shared_ptr<LinearSlot> base_;
  at::Tensor lora_A_;
  at::Tensor lora_B_;
  double scaling_;
  double dropout_;
  bool merged_ = false;
};

}  // namespace qtrain

// An adapter: a LinearSlot that wraps a frozen base slot and adds trainable tensors (LoRA, rsLoRA,
// QA-LoRA). Trainer, exporter and the PEFT file code handle adapters only through this interface.
#pragma once

#include "models/linear.h"

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qtrain {

class AdapterSlot : public LinearSlot {
 public:
  // The wrapped slot (DenseLinear, QuantizedLinearSlot, ...). Its parameters never require grad.
  virtual std::shared_ptr<LinearSlot> base() const = 0;
  // The trainable tensors (requires_grad true) under their PEFT-relative names, e.g.
  // {"lora_A.weight" [r, in], "lora_B.weight" [out, r]}; the tensors are the module's parameters,
  // not copies.
  virtual std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const = 0;
  // Copies `value` (any float dtype or device) into the tensor `name`. Throws Error(kShape)
  // naming the tensor for an unknown name or a shape mismatch.
  virtual void load_adapter_tensor(const std::string& name, const at::Tensor& value) = 0;
  // Folds the adapter into the base weight and back. See the implementation for what each base
  // supports and for the errors.
  virtual void merge() = 0;
  virtual void unmerge() = 0;
  virtual bool merged() const = 0;

  // Switched off, forward is the base slot's alone (DPO's reference model: the same base with
  // the adapters off). A merged adapter is part of the base weight and stays in.
  void set_enabled(bool enabled) { enabled_ = enabled; }
  bool enabled() const { return enabled_; }

 protected:
  bool enabled_ = true;
};

}  // namespace qtrain

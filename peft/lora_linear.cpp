#include "peft/lora_linear.h"

#include "core/error.h"
#include "models/quantized_linear_slot.h"
#include "peft/lora_pair.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <cmath>

namespace qtrain {
namespace {

// Where the base's weights live: adapters are created next to them.
c10::Device slot_device(const LinearSlot& slot) {
  if (const auto* quantized = dynamic_cast<const QuantizedLinearSlot*>(&slot)) {
    return quantized->weight().device();
  }
  if (const auto* adapter = dynamic_cast<const AdapterSlot*>(&slot)) {
    return slot_device(*adapter->base());
  }
  for (const auto& p : slot.parameters()) return p.device();
  for (const auto& b : slot.buffers()) return b.device();
  return c10::kCPU;
}

}  // namespace

LoraLinear::LoraLinear(std::shared_ptr<LinearSlot> base, const LoraConfig& config,
                       at::Generator generator)
    : scaling_(config.scaling()), dropout_(config.dropout) {
  if (!base) throw_error(ErrorKind::kInternal, "LoraLinear needs a base slot");
  config.validate();
  if (!generator.defined() || !generator.device().is_cpu()) {
    throw_error(ErrorKind::kInternal, "LoraLinear initialises from a CPU generator");
  }
  for (auto& p : base->parameters()) p.requires_grad_(false);
  const bool training = base->is_training();
  base_ = register_module("base_layer", std::move(base));

  const int64_t in = base_->in_features(), out = base_->out_features(), r = config.r;
  at::Tensor a = at::empty({r, in}, at::kFloat);
  if (config.init == "gaussian") {
    a.normal_(0.0, 1.0 / static_cast<double>(r), generator);
  } else {
    // kaiming_uniform_(a=sqrt(5)) on [r, in]: gain sqrt(2/(1+5)), bound gain*sqrt(3/in).
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    a.uniform_(-bound, bound, generator);
  }
  const auto options = at::TensorOptions().dtype(config.dtype).device(slot_device(*base_));
  lora_A_ = register_module("lora_A", std::make_shared<torch::nn::Module>())
                ->register_parameter("weight", a.to(options));
  lora_B_ = register_module("lora_B", std::make_shared<torch::nn::Module>())
                ->register_parameter("weight", at::zeros({out, r}, options));
  train(training);
}

at::Tensor LoraLinear::forward(const at::Tensor& x) {
  at::Tensor y = base_->forward(x);
  if (merged_ || !enabled_) return y;
  at::Tensor h = x.to(lora_A_.scalar_type());
  if (dropout_ > 0 && is_training()) h = at::dropout(h, dropout_, /*train=*/true);
  at::Tensor delta = at::linear(at::linear(h, lora_A_), lora_B_) * scaling_;  // [..., out]
  return y + delta.to(y.scalar_type());
}

std::vector<std::pair<std::string, at::Tensor>> LoraLinear::adapter_tensors() const {
  return lora_pair_tensors(lora_A_, lora_B_);
}

void LoraLinear::load_adapter_tensor(const std::string& name, const at::Tensor& value) {
  load_lora_pair_tensor(lora_A_, lora_B_, merged_, name, value,
                        "adapter made for another model or rank?");
}

at::Tensor LoraLinear::delta_weight() const {
  const auto compute = lora_A_.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::NoGradGuard no_grad;
  return at::matmul(lora_B_.to(compute), lora_A_.to(compute)) * scaling_;  // [out, in]
}

at::Tensor LoraLinear::dense_base_weight(const char* action) const {
  auto* dense = dynamic_cast<DenseLinear*>(base_.get());
  if (dense == nullptr) {
    const bool quantized = dynamic_cast<QuantizedLinearSlot*>(base_.get()) != nullptr;
    throw_error(ErrorKind::kUnsupported,
                std::string("cannot ") + action + " a LoRA adapter into " +
                    (quantized ? "a quantized base weight in place; dequantize the base and add "
                                 "delta_weight() instead (the exporter does)"
                               : "a base that is not a DenseLinear"));
  }
  return dense->weight();
}

void LoraLinear::add_delta_to_base(double sign, const char* action) {
  at::Tensor w = dense_base_weight(action);  // [out, in], shares storage with the base
  at::Tensor delta = delta_weight();
  const auto compute = at::promote_types(w.scalar_type(), delta.scalar_type());
  at::NoGradGuard no_grad;
  w.copy_(w.to(compute) + sign * delta.to(w.device(), compute));
}

void LoraLinear::merge() {
  if (merged_) throw_error(ErrorKind::kInternal, "LoRA adapter is already merged");
  add_delta_to_base(+1.0, "merge");
  merged_ = true;
}

void LoraLinear::unmerge() {
  if (!merged_) throw_error(ErrorKind::kInternal, "LoRA adapter is not merged");
  add_delta_to_base(-1.0, "unmerge");
  merged_ = false;
}

}  // namespace qtrain

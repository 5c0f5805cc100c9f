#include "peft/qalora_linear.h"

#include "core/error.h"
#include "peft/lora_pair.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

namespace qtrain {
QaLoraLinear::QaLoraLinear(std::shared_ptr<Int4LinearSlot> base, const LoraConfig& config,
                           int64_t group_size, at::Generator generator)
    : group_size_(group_size), scaling_(config.scaling()), dropout_(config.dropout) {
  if (!base) throw_error(ErrorKind::kInternal, "QaLoraLinear needs a base slot");
  config.validate();
  if (group_size != base->weight().group_size) {
    throw_error(ErrorKind::kConfig,
                "qalora group size " + std::to_string(group_size) +
                    " must equal the int4 base's quantization group size " +
                    std::to_string(base->weight().group_size) +
                    " (only then does the adapter merge into the zero points)",
                {.field = "group_size"});
  }
  if (!generator.defined() || !generator.device().is_cpu()) {
    throw_error(ErrorKind::kInternal, "QaLoraLinear initialises from a CPU generator");
  }
  for (auto& p : base->parameters()) p.requires_grad_(false);
  const bool training = base->is_training();
  const c10::Device device = base->weight().device();
  base_ = register_module("base_layer", std::move(base));

  const int64_t groups = base_->in_features() / group_size, out = base_->out_features();
  const int64_t r = config.r;
  at::Tensor a = at::empty({r, groups}, at::kFloat);
  // No lock here: the sampling kernels take the generator's own (non-recursive) mutex.
  if (config.init == "gaussian") {
    a.normal_(0.0, 1.0 / static_cast<double>(r), generator);
  } else {
    // kaiming_uniform_(a=sqrt(5)) with fan-in in/g: bound 1/sqrt(in/g).
    const double bound = 1.0 / std::sqrt(static_cast<double>(groups));
    a.uniform_(-bound, bound, generator);
  }
  const auto options = at::TensorOptions().dtype(config.dtype).device(device);
  lora_A_ = register_module("lora_A", std::make_shared<torch::nn::Module>())
                ->register_parameter("weight", a.to(options));
  lora_B_ = register_module("lora_B", std::make_shared<torch::nn::Module>())
                ->register_parameter("weight", at::zeros({out, r}, options));
  train(training);
}

at::Tensor QaLoraLinear::forward(const at::Tensor& x) {
  at::Tensor y = base_->forward(x);  // [..., out]
  if (merged_ || !enabled_) return y;
  const int64_t groups = in_features() / group_size_;
  at::Tensor pooled =
      x.to(lora_A_.scalar_type()).unflatten(-1, {groups, group_size_}).mean(-1);  // [..., in/g]
  if (dropout_ > 0 && is_training()) pooled = at::dropout(pooled, dropout_, /*train=*/true);
  at::Tensor delta = at::linear(at::linear(pooled, lora_A_), lora_B_) * scaling_;  // [..., out]
  return y + delta.to(y.scalar_type());
}

std::vector<std::pair<std::string, at::Tensor>> QaLoraLinear::adapter_tensors() const {
  return lora_pair_tensors(lora_A_, lora_B_);
}

void QaLoraLinear::load_adapter_tensor(const std::string& name, const at::Tensor& value) {
  load_lora_pair_tensor(
      lora_A_, lora_B_, merged_, name, value,
      "QA-LoRA lora_A is [r, in/group_size]; adapter made for another model, rank or group size?");
}

at::Tensor QaLoraLinear::group_delta() const {
  const auto compute = lora_A_.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::NoGradGuard no_grad;
  at::Tensor ba = at::matmul(lora_B_.to(compute), lora_A_.to(compute));  // [out, in/g]
  return ba * (scaling_ / static_cast<double>(group_size_));
}

at::Tensor QaLoraLinear::zero_shift() const {
  at::Tensor d = group_delta();
  return d / base_->weight().scales.to(d.device(), d.scalar_type());  // [out, in/g]
}

at::Tensor QaLoraLinear::delta_weight() const {
  return group_delta().repeat_interleave(group_size_, /*dim=*/1);  // [out, in]
}

void QaLoraLinear::merge() {
  if (merged_) throw_error(ErrorKind::kInternal, "QA-LoRA adapter is already merged");
  Int4GroupTensor& w = base_->mutable_weight();
  at::Tensor shift = zero_shift();
  at::NoGradGuard no_grad;
  unmerged_zeros_ = w.zeros;
  // A new tensor rather than an in-place update, so the saved copy stays the original.
  w.zeros = (w.zeros.to(shift.scalar_type()) - shift.to(w.zeros.device()))
                .to(w.zeros.scalar_type())
                .contiguous();
  merged_ = true;
}

void QaLoraLinear::unmerge() {
  if (!merged_) throw_error(ErrorKind::kInternal, "QA-LoRA adapter is not merged");
  base_->mutable_weight().zeros = unmerged_zeros_;
  unmerged_zeros_ = at::Tensor();
  merged_ = false;
}

}  // namespace qtrain

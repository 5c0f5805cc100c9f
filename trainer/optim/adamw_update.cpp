#include "trainer/optim/adamw_update.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

namespace qtrain {
namespace {

// grads as float32 tensors of their parameter's layout. Those already float32 and contiguous are
// used as they are; the others are converted into one flat scratch buffer with one
// _foreach_copy_ (a single multi-tensor kernel on CUDA rather than one cast per tensor).
std::vector<at::Tensor> float32_grads(const std::vector<at::Tensor>& grads) {
  std::vector<at::Tensor> out(grads.size());
  std::vector<size_t> convert;
  int64_t scratch_numel = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    if (grads[i].scalar_type() == at::kFloat && grads[i].is_contiguous()) {
      out[i] = grads[i];
    } else {
      convert.push_back(i);
      scratch_numel += grads[i].numel();
    }
  }
  if (convert.empty()) return out;
  const at::Tensor scratch =
      at::empty({scratch_numel}, grads[convert[0]].options().dtype(at::kFloat));
  std::vector<at::Tensor> sources;
  std::vector<at::Tensor> targets;
  int64_t offset = 0;
  for (const size_t i : convert) {
    const int64_t n = grads[i].numel();
    out[i] = scratch.slice(0, offset, offset + n).view(grads[i].sizes());
    offset += n;
    sources.push_back(grads[i]);
    targets.push_back(out[i]);
  }
  at::_foreach_copy_(targets, sources);
  return out;
}

struct BiasCorrection {
  double step_size;              // lr / (1 - b1^t)
  double bias_correction2_sqrt;  // sqrt(1 - b2^t)
};

BiasCorrection bias_correction(const AdamWOptions& o, int64_t step) {
  const double t = static_cast<double>(step);
  return {o.lr / (1 - std::pow(o.beta1, t)), std::sqrt(1 - std::pow(o.beta2, t))};
}

void update_per_tensor(AdamWLists& l, const AdamWOptions& o) {
  for (size_t i = 0; i < l.params.size(); ++i) {
    at::Tensor& p = l.params[i];
    const at::Tensor g = l.grads[i].to(at::kFloat);
    if (o.weight_decay != 0) p.mul_(1 - o.lr * o.weight_decay);
    l.exp_avgs[i].lerp_(g, 1 - o.beta1);
    l.exp_avg_sqs[i].mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);
    const BiasCorrection c = bias_correction(o, l.steps[i]);
    const at::Tensor denom = (l.exp_avg_sqs[i].sqrt() / c.bias_correction2_sqrt).add_(o.eps);
    p.addcdiv_(l.exp_avgs[i], denom, -c.step_size);
  }
}

// torch.optim.adam._multi_tensor_adam (capturable=False, decoupled weight decay), op for op.
void update_foreach(AdamWLists& l, const AdamWOptions& o) {
  const std::vector<at::Tensor> grads = float32_grads(l.grads);
  if (o.weight_decay != 0) at::_foreach_mul_(l.params, 1 - o.lr * o.weight_decay);
  at::_foreach_lerp_(l.exp_avgs, grads, 1 - o.beta1);
  at::_foreach_mul_(l.exp_avg_sqs, o.beta2);
  at::_foreach_addcmul_(l.exp_avg_sqs, grads, grads, 1 - o.beta2);
  std::vector<at::Scalar> step_sizes;
  std::vector<at::Scalar> bias_corrections2_sqrt;
  for (const int64_t step : l.steps) {
    const BiasCorrection c = bias_correction(o, step);
    step_sizes.emplace_back(-c.step_size);
    bias_corrections2_sqrt.emplace_back(c.bias_correction2_sqrt);
  }
  std::vector<at::Tensor> denoms = at::_foreach_sqrt(l.exp_avg_sqs);
  at::_foreach_div_(denoms, bias_corrections2_sqrt);
  at::_foreach_add_(denoms, o.eps);
  at::_foreach_addcdiv_(l.params, l.exp_avgs, denoms, step_sizes);
}

void update_fused(AdamWLists& l, const AdamWOptions& o) {
  const std::vector<at::Tensor> grads = float32_grads(l.grads);
  at::_foreach_add_(l.device_steps, 1);
  at::_fused_adamw_(l.params, grads, l.exp_avgs, l.exp_avg_sqs, /*max_exp_avg_sqs=*/{},
                    l.device_steps, o.lr, o.beta1, o.beta2, o.weight_decay, o.eps,
                    /*amsgrad=*/false, /*maximize=*/false);
}

}  // namespace

AdamWKernel resolve_adamw_kernel(AdamWKernel kernel, const at::Device& device) {
  if (kernel != AdamWKernel::kAuto) return kernel;
  return device.is_cuda() ? AdamWKernel::kFused : AdamWKernel::kPerTensor;
}

void adamw_update(AdamWLists& lists, const AdamWOptions& options, AdamWKernel kernel) {
  if (lists.params.empty()) return;
  const at::NoGradGuard no_grad;
  AdamWKernel resolved = resolve_adamw_kernel(kernel, lists.params[0].device());
  if (resolved == AdamWKernel::kFused) {
    for (const at::Tensor& p : lists.params) {
      if (p.is_contiguous()) continue;
      // The fused kernel walks flat buffers; keep its step counters in line for later steps.
      at::_foreach_add_(lists.device_steps, 1);
      resolved = AdamWKernel::kForEach;
      break;
    }
  }
  switch (resolved) {
    case AdamWKernel::kPerTensor:
      update_per_tensor(lists, options);
      break;
    case AdamWKernel::kFused:
      update_fused(lists, options);
      break;
    default:
      update_foreach(lists, options);
      break;
  }
}

}  // namespace qtrain

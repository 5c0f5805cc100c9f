#include "trainer/optim/grad_clip.h"

#include "core/error.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

namespace qtrain {

at::Tensor clip_grad_norm_on_device(const std::vector<at::Tensor>& params, double max_norm) {
  if (!(max_norm >= 0) || !std::isfinite(max_norm)) {
    throw_error(ErrorKind::kConfig, "max_grad_norm must be finite and >= 0",
                {.field = "training.max_grad_norm"});
  }
  const at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) {
    const at::Device device = params.empty() ? at::Device(at::kCPU) : params[0].device();
    return at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device));
  }
  const std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2, at::kFloat);
  // One norm is used as it is (torch does the same), so a single gradient's norm is exact.
  const at::Tensor total = norms.size() == 1 ? norms[0] : at::stack(norms).norm(2);
  if (max_norm > 0) {
    const at::Tensor coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
    at::_foreach_mul_(grads, at::where(at::isfinite(total), coef, at::ones_like(coef)));
  }
  return total;
}

GradNormResult clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  GradNormResult result;
  result.total_norm = clip_grad_norm_on_device(params, max_norm).item<double>();
  result.finite = std::isfinite(result.total_norm);
  return result;
}

}  // namespace qtrain

#include "trainer/optim/grad_clip.h"

#include "core/error.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

namespace qtrain {

GradNormResult clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  if (!(max_norm >= 0) || !std::isfinite(max_norm)) {
    throw_error(ErrorKind::kConfig, "max_grad_norm must be finite and >= 0",
                {.field = "training.max_grad_norm"});
  }
  const at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  std::vector<at::Tensor> norms;
  for (const at::Tensor& p : params) {
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    grads.push_back(g);
    norms.push_back(at::linalg_vector_norm(g, 2, std::nullopt, false, at::kFloat));
  }
  if (grads.empty()) return {};
  // One norm is used as it is (torch does the same), so a single gradient's norm is exact.
  const at::Tensor total = norms.size() == 1 ? norms[0] : at::stack(norms).norm(2);
  GradNormResult result;
  result.total_norm = total.item<double>();
  result.finite = std::isfinite(result.total_norm);
  if (max_norm > 0 && result.finite) {
    const at::Tensor coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
    for (at::Tensor& g : grads) g.mul_(coef);
  }
  return result;
}

}  // namespace qtrain

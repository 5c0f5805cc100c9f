// Gradient-norm clipping with torch.nn.utils.clip_grad_norm_'s semantics (norm_type 2): the total
// norm is the 2-norm of the per-gradient 2-norms, each computed in float32 (also for bf16
// gradients, where torch would round it to bf16); every gradient is scaled by
// min(1, max_norm / (total_norm + 1e-6)). Unlike torch, a non-finite total norm scales nothing
// and is reported, so the trainer can skip or stop the step.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace qtrain {

struct GradNormResult {
  double total_norm = 0;  // 0 when no parameter has a gradient
  bool finite = true;
};

// params: any shapes, float dtypes, on one device; those without .grad() are ignored.
// max_norm 0 measures only.
GradNormResult clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace qtrain

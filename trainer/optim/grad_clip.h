// Gradient-norm clipping with torch.nn.utils.clip_grad_norm_'s semantics (norm_type 2): the total
// norm is the 2-norm of the per-gradient 2-norms (one _foreach_norm, then stack and norm; a single
// gradient's norm is used as it is), each computed in float32 (also for bf16 gradients, where
// torch would round it to bf16); every gradient is scaled in place by
// min(1, max_norm / (total_norm + 1e-6)), the factor a float32 tensor as in torch. Unlike torch,
// a non-finite total norm scales nothing (factor 1) and is reported, so the trainer can skip or
// stop the step.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace qtrain {

// params: any shapes, float dtypes, on one device; those without .grad() are ignored.
// max_norm 0 measures only; a negative or non-finite max_norm is Error kConfig naming
// "training.max_grad_norm".
//
// Returns the total norm as a float32 [] tensor on the gradients' device (zero, on the first
// parameter's device or the CPU, when no parameter has a gradient). Everything, the clipping
// decision included, stays on the device: no host synchronisation, so the caller can read the
// norm together with other values in one transfer.
at::Tensor clip_grad_norm_on_device(const std::vector<at::Tensor>& params, double max_norm);

struct GradNormResult {
  double total_norm = 0;  // 0 when no parameter has a gradient
  bool finite = true;
};

// clip_grad_norm_on_device, then the norm read to the host (one synchronisation).
GradNormResult clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace qtrain

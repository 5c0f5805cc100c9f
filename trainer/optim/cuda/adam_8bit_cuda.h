// The CUDA kernel of bitsandbytes' blockwise 8-bit AdamW step (kOptimizerStatic8bit2StateBlockwise,
// reference/formats.md §2) over many parameters per launch: per 256-element block it decodes the
// moments through the code tables, updates them and the parameter, takes the new absmax and
// requantizes. The arithmetic is trainer/optim/adam_8bit_kernel.cpp's CPU loop (the reference)
// operation for operation, each one rounded to float32 by the explicit _rn intrinsics (no FMA
// contraction), so codes, absmax and parameters equal the CPU loop's bit for bit.
// Called by adam_8bit_blockwise_update_many (adam_8bit_kernel.h), which checks the arguments.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace qtrain::cuda {

// The float32 scalars of one parameter's update, computed on the host exactly as the CPU loop
// computes them (adam_8bit_kernel.cpp: scalars_of).
struct Adam8bitScalars {
  float beta1, beta2;
  float one_minus_beta1, one_minus_beta2;
  float step_size;  // -lr * c2 / c1
  float eps_hat;    // c2 * eps
  float decay;      // 1 - lr * weight_decay, applied when `decays`
  bool decays;
};

struct Adam8bitTensors {
  at::Tensor param;    // [numel] float32, float16 or bfloat16, contiguous, updated in place
  at::Tensor grad;     // [numel] float32, float16 or bfloat16, contiguous
  at::Tensor codes1;   // uint8 [numel], contiguous: m's codes in the signed map
  at::Tensor codes2;   // uint8 [numel], contiguous: v's codes in the unsigned map
  at::Tensor absmax1;  // float32 [ceil(numel / 256)]
  at::Tensor absmax2;  // float32 [ceil(numel / 256)]
  Adam8bitScalars scalars;
};

// All tensors on one CUDA device; qmap1 (signed) and qmap2 (unsigned): float32 [256] sorted, on
// that device. Runs on the current stream: one launch per run of up to 36 consecutive
// parameters sharing a (param, grad) dtype pair.
void adam_8bit_blockwise_update(const std::vector<Adam8bitTensors>& tensors,
                                const at::Tensor& qmap1, const at::Tensor& qmap2);

}  // namespace qtrain::cuda

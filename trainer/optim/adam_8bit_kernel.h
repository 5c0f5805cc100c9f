// The update kernels of bitsandbytes' 8-bit AdamW (reference/formats.md §2), following
// csrc/kernels.cu: kOptimizerStatic8bit2StateBlockwise for parameters with blockwise 8-bit states
// and kOptimizer32bit2State (Adam) for the small parameters that keep float32 states.
//
// The hyperparameters are float32 as the CUDA kernels receive them (so 1 - b2 = 1 - 0.999f). With
// t the parameter's step, c1 = 1 - b1^t, c2 = sqrt(1 - b2^t) and step_size = -lr * c2 / c1 are
// computed in float64 and rounded once to float32 (the kernels use float32 powers, which lose up
// to ~1e-5 of c2 to cancellation at small t; bnb's CPU backend uses float64 as here).
// Blockwise (blocks of 256 elements), per element with a finite gradient g:
//   m = qmap1[code1] * absmax1 * b1 + (1 - b1) * g
//   v = qmap2[code2] * absmax2 * b2 + (1 - b2) * g * g
//   p = T(p + step_size * (m / (sqrt(v) + eps_hat)));  if wd > 0: p = T(p * (1 - lr * wd))
// (eps_hat = float(c2 * eps)).
// A NaN or infinite g sets that element's m and v to 0 and leaves its parameter untouched.
// Then per block absmax1 = max |m|, absmax2 = max |v| (over the updated values), and each value
// is requantized to the nearest entry of its code table after scaling by 1 / absmax (ties to the
// lower code, as quant/blockwise.h; bnb's CUDA search differs only on exact ties). If the decoded
// m would have the other sign than m, its code moves one step towards m's sign.
// The float32-state kernel: m = m*b1 + (1-b1)*g, v = v*b2 + (1-b2)*(g*g), the same parameter
// update and decay, and no special case for non-finite gradients.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace qtrain {

constexpr int64_t kAdam8bitBlocksize = 256;  // BLOCKSIZE_2STATE
constexpr int64_t kAdam8bitMinNumel = 4096;  // min_8bit_size: smaller params keep float32 states

struct Adam8bitStep {
  float lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // the parameter's step count, >= 1
};

// param: [*] any float dtype; grad: same numel, any float dtype; codes1, codes2: uint8, same
// numel; absmax1, absmax2: float32 [ceil(numel / 256)]; qmap1 (signed), qmap2 (unsigned): float32
// [256] sorted. All on one device; everything but grad and the maps is updated in place.
// CPU tensors take a fused per-block loop (the reference); CUDA tensors its CUDA kernel
// (trainer/optim/cuda/adam_8bit_cuda.h: the same codes, absmax and parameters bit for bit) when
// qtrain is built with CUDA; other devices a composite of tensor operations and
// quant/blockwise.h kernels (same formulas; results may differ by rounding).
void adam_8bit_blockwise_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& codes1,
                                at::Tensor& codes2, at::Tensor& absmax1, at::Tensor& absmax2,
                                const at::Tensor& qmap1, const at::Tensor& qmap2,
                                const Adam8bitStep& s);

// One parameter's blockwise state for adam_8bit_blockwise_update_many (shapes as above).
struct Adam8bitBlockwiseTensors {
  at::Tensor param;
  at::Tensor grad;
  at::Tensor codes1, codes2;
  at::Tensor absmax1, absmax2;
  Adam8bitStep step;
};

// adam_8bit_blockwise_update of several parameters on one device sharing qmap1 and qmap2. On CUDA
// (built with CUDA, float32/float16/bfloat16 params and grads) one kernel launch per run of up to
// 36 parameters; otherwise one adam_8bit_blockwise_update per parameter.
void adam_8bit_blockwise_update_many(std::vector<Adam8bitBlockwiseTensors>& params,
                                     const at::Tensor& qmap1, const at::Tensor& qmap2);

// The two implementations behind adam_8bit_blockwise_update, exposed for tests: the fused loop
// needs CPU tensors; the composite one runs on any device.
void adam_8bit_blockwise_update_fused_cpu(at::Tensor& param, const at::Tensor& grad,
                                          at::Tensor& codes1, at::Tensor& codes2,
                                          at::Tensor& absmax1, at::Tensor& absmax2,
                                          const at::Tensor& qmap1, const at::Tensor& qmap2,
                                          const Adam8bitStep& s);
void adam_8bit_blockwise_update_composite(at::Tensor& param, const at::Tensor& grad,
                                          at::Tensor& codes1, at::Tensor& codes2,
                                          at::Tensor& absmax1, at::Tensor& absmax2,
                                          const at::Tensor& qmap1, const at::Tensor& qmap2,
                                          const Adam8bitStep& s);

// param: [*] any float dtype; grad: same numel; exp_avg, exp_avg_sq: float32, same numel.
void adam_32bit_bnb_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                           at::Tensor& exp_avg_sq, const Adam8bitStep& s);

}  // namespace qtrain

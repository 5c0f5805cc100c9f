// The AdamW update over a list of parameters on one device, in three implementations of one
// algorithm (adamw.h has the formulas):
//   kPerTensor  torch.optim.AdamW's single-tensor loop: ~8 ATen operations per parameter
//   kForEach    torch.optim.AdamW(foreach=True): the same operations as _foreach_ ops, one call
//               per operation for the whole list; bit-identical to kPerTensor (on the CPU the
//               _foreach_ ops run the same per-tensor kernels; on CUDA both round each operation
//               to float32 once)
//   kFused      torch.optim.AdamW(fused=True): at::_fused_adamw_, one pass over each parameter's
//               param, grad and moments (multi-tensor on CUDA). It folds the operations
//               differently (m = b1*m + (1-b1)*g instead of lerp, p -= lr*wd*p, float64 scalars),
//               so it agrees with the others within float32 rounding, not bit for bit.
// kAuto picks kFused on CUDA, where launches dominate (448 tensors of an 8B r=16 adapter set:
// ~3600 kernel launches per step for kPerTensor, a handful for kFused), and kPerTensor elsewhere:
// on the CPU it is bit-identical to PyTorch's default CPU AdamW (the reference the tests compare
// against) and faster than kForEach, which streams every operation over the whole set instead
// of keeping one tensor in cache, and no slower than kFused there (tools/bench/bench_optim.cpp,
// 10.5M bf16 parameters in 448 tensors, one CPU thread: 31 ms per-tensor, 89 ms foreach, 38 ms
// fused).
#pragma once

#include "trainer/optim/optimizer.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace qtrain {

enum class AdamWKernel { kAuto, kPerTensor, kForEach, kFused };

// kAuto resolved for a device.
AdamWKernel resolve_adamw_kernel(AdamWKernel kernel, const at::Device& device);

// Parallel lists, every tensor on one device. params, exp_avgs, exp_avg_sqs: float32, contiguous,
// one shape per index; grads: that shape, any float dtype (converted to float32 first).
struct AdamWLists {
  std::vector<at::Tensor> params;
  std::vector<at::Tensor> grads;
  std::vector<at::Tensor> exp_avgs;
  std::vector<at::Tensor> exp_avg_sqs;
  std::vector<int64_t> steps;  // each parameter's step count including this update (>= 1)
  // float32 [] tensors on the device holding steps - 1: the fused kernel reads its step count
  // from the device, and adamw_update(kFused) increments them. The other kernels ignore them.
  std::vector<at::Tensor> device_steps;
};

// One AdamW update of every parameter in `lists` with `kernel` (kAuto resolved by the device).
void adamw_update(AdamWLists& lists, const AdamWOptions& options, AdamWKernel kernel);

}  // namespace qtrain

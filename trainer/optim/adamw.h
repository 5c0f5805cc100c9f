// AdamW with float32 states: torch.optim.AdamW's algorithm,
//   p *= 1 - lr*wd                                  (decoupled decay, before the Adam update)
//   m.lerp_(g, 1 - b1);  v = v*b2 + (1 - b2)*g*g
//   p += -(lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// with t the parameter's own step count (adamw_update.h): on the CPU one parameter at a time, so
// float32 parameters follow PyTorch's default CPU AdamW bit for bit; on CUDA over all parameters
// of the device at once with at::_fused_adamw_ (torch.optim.AdamW(fused=True), equal within
// float32 rounding).
// Parameters of other dtypes (bf16 LoRA weights) are updated through float32 master weights
// (master_weights.h, optimizer.h).
//
// Paged (reference/formats.md §2): on CUDA, the states (moments and masters) of parameters with
// >= 1e5 elements live in managed memory and are prefetched to the GPU before the step; otherwise
// the states are plain tensors and the results equal the unpaged optimizer's bit for bit.
#pragma once

#include "trainer/optim/adamw_update.h"
#include "trainer/optim/master_weights.h"
#include "trainer/optim/optimizer.h"

namespace qtrain {

class AdamW final : public Optimizer {
 public:
  // kernel: which implementation of the update runs (adamw_update.h); make_optimizer uses kAuto.
  AdamW(NamedParameters named_params, const AdamWOptions& options, bool paged,
        AdamWKernel kernel = AdamWKernel::kAuto);

  void step() override;
  // Keys: "step"; per parameter "<name>.step", "<name>.exp_avg" and "<name>.exp_avg_sq"
  // (float32, the parameter's shape), and "<name>.master" for non-float32 parameters.
  std::map<std::string, at::Tensor> state_dict() const override;
  void load_state_dict(const std::map<std::string, at::Tensor>& state) override;
  int64_t state_bytes() const override;

  bool paged() const { return paged_; }
  // The live state buffers (exp_avg, exp_avg_sq of each parameter in order, then the masters),
  // for memory checks.
  std::vector<at::Tensor> state_buffers() const;

 private:
  struct State {
    int64_t step = 0;
    at::Tensor exp_avg;      // float32, the parameter's shape and device
    at::Tensor exp_avg_sq;   // float32, the parameter's shape and device
    at::Tensor device_step;  // kFused only: float32 [] on the device, equal to step
  };

  bool paged_;
  AdamWKernel kernel_;
  std::vector<State> states_;  // parallel to params_
  MasterWeights masters_;
};

}  // namespace qtrain

// AdamW with float32 states: torch.optim.AdamW's single-tensor algorithm, operation for operation,
// so float32 parameters follow PyTorch bit for bit on the same device:
//   p *= 1 - lr*wd                                  (decoupled decay, before the Adam update)
//   m.lerp_(g, 1 - b1);  v = v*b2 + (1 - b2)*g*g
//   p += -(lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// with t the parameter's own step count. Parameters of other dtypes (bf16 LoRA weights) keep
// float32 states too (PyTorch would keep them in the parameter dtype): the update runs on a
// float32 copy of the parameter and the result is rounded once into it (param.copy_(p32)).
//
// Paged (reference/formats.md §2): on CUDA, the states of parameters with >= 1e5 elements live in
// managed memory and are prefetched to the GPU before each parameter's update; otherwise the
// states are plain tensors and the results equal the unpaged optimizer's bit for bit.
#pragma once

#include "trainer/optim/optimizer.h"

namespace qtrain {

class AdamW final : public Optimizer {
 public:
  AdamW(NamedParameters named_params, const AdamWOptions& options, bool paged);

  void step() override;
  // Keys: "step"; per parameter "<name>.step", "<name>.exp_avg" and "<name>.exp_avg_sq"
  // (float32, the parameter's shape).
  std::map<std::string, at::Tensor> state_dict() const override;
  void load_state_dict(const std::map<std::string, at::Tensor>& state) override;
  int64_t state_bytes() const override;

  bool paged() const { return paged_; }
  // The live moment buffers (exp_avg, exp_avg_sq of each parameter in order), for memory checks.
  std::vector<at::Tensor> state_buffers() const;

 private:
  struct State {
    int64_t step = 0;
    at::Tensor exp_avg;     // float32, the parameter's shape and device
    at::Tensor exp_avg_sq;  // float32, the parameter's shape and device
  };

  void update(at::Tensor& param, const at::Tensor& grad, State& state) const;

  bool paged_;
  std::vector<State> states_;  // parallel to params_
};

}  // namespace qtrain

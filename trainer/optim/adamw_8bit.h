// bitsandbytes' 8-bit AdamW (AdamW8bit / PagedAdamW8bit, reference/formats.md §2): blockwise
// 8-bit moments (blocks of 256; m with the signed dynamic map, v with the unsigned one, a float32
// absmax per block) for parameters with >= 4096 elements, float32 moments for smaller ones. The
// update (bias corrections folded into the step size, decoupled decay after the step, NaN/Inf
// gradient handling, sign-preserving requantization) is in adam_8bit_kernel.h.
// On CUDA the blockwise parameters of a step go through one multi-tensor kernel
// (adam_8bit_blockwise_update_many), whose results equal the CPU loop's bit for bit.
// Parameters that are not float32 (bf16 adapters) are updated through float32 master weights
// (master_weights.h, optimizer.h); bitsandbytes keeps none and rounds into the parameter.
// Paged: on CUDA the 8-bit codes (and the float32 moments and masters) of parameters with >= 1e5
// elements live in managed memory, prefetched before each update; absmax stays in device memory.
#pragma once

#include "trainer/optim/master_weights.h"
#include "trainer/optim/optimizer.h"

namespace qtrain {

class AdamW8bit final : public Optimizer {
 public:
  AdamW8bit(NamedParameters named_params, const AdamWOptions& options, bool paged);

  void step() override;
  // Keys: "step"; per parameter "<name>.step" and either (>= 4096 elements)
  // "<name>.exp_avg.codes", "<name>.exp_avg_sq.codes" (uint8, the parameter's shape),
  // "<name>.exp_avg.absmax", "<name>.exp_avg_sq.absmax" (float32 [ceil(numel / 256)]),
  // or (smaller) "<name>.exp_avg", "<name>.exp_avg_sq" (float32, the parameter's shape); and
  // "<name>.master" for non-float32 parameters.
  std::map<std::string, at::Tensor> state_dict() const override;
  void load_state_dict(const std::map<std::string, at::Tensor>& state) override;
  int64_t state_bytes() const override;

  bool paged() const { return paged_; }
  // The live state buffers (exp_avg, exp_avg_sq of each parameter in order: 8-bit codes or
  // float32 moments; then the masters), for memory checks.
  std::vector<at::Tensor> state_buffers() const;

 private:
  struct State {
    int64_t step = 0;
    bool blockwise = false;
    at::Tensor exp_avg;     // blockwise: uint8 codes; else float32; the parameter's shape
    at::Tensor exp_avg_sq;  // the same
    at::Tensor absmax1;     // blockwise: float32 [ceil(numel / 256)]
    at::Tensor absmax2;
    at::Tensor qmap1;  // blockwise: the signed dynamic map, float32 [256], on the param's device
    at::Tensor qmap2;  // the unsigned dynamic map
  };

  bool paged_;
  std::vector<State> states_;  // parallel to params_
  MasterWeights masters_;
};

}  // namespace qtrain

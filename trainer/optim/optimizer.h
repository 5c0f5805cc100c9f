// The optimizers the trainer uses, over named parameters (the names are the PEFT adapter keys, so
// they are stable across runs and key the checkpointed state):
//   adamw             torch.optim.AdamW, float32 states (adamw.h)
//   paged_adamw       the same math; on CUDA the large states live in managed memory
//   adamw_8bit        bitsandbytes' blockwise 8-bit AdamW (adamw_8bit.h, reference/formats.md §2)
//   paged_adamw_8bit  the same with managed-memory states on CUDA
// A checkpoint holds state_dict() and resumes bit-exactly through load_state_dict().
//
// Master weights (the default, in every kind; master_weights.h): each parameter that is not
// float32 (adapter.dtype bfloat16, the default) gets a float32 master copy in the optimizer state,
// taken from the parameter at its first step. step() updates the master and rounds it into the
// parameter once. Why: bf16 keeps 8 significant bits, so an update below half a bf16 ulp of the
// weight (|update| < |w| * 2^-9, common at small learning rates late in a cosine schedule) is
// rounded away every step and never accumulates; PEFT upcasts adapters to float32 by default for
// the same reason. Forward and backward still run on the bf16 parameter (fast bf16 matmuls); the
// cost is 4 bytes per adapter parameter of optimizer state. zero_grad() touches only gradients
// (the masters have none); the masters are saved as "<name>.master" and a checkpoint without
// them (written before they existed) still loads: the master is then taken from the restored
// parameter at the next step. Between steps the master is authoritative: a value written into a
// parameter after its first step is overwritten by the next step's rounding of the master.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qtrain {

struct AdamWOptions {
  double lr = 2e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

using NamedParameters = std::vector<std::pair<std::string, at::Tensor>>;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a .grad(); parameters without one are skipped (their
  // own step count does not advance, as in torch). Non-float32 parameters are updated through
  // their masters. On CUDA no step reads anything back to the host.
  virtual void step() = 0;
  // Sets every gradient to undefined (torch's set_to_none).
  void zero_grad();

  void set_lr(double lr);
  double lr() const { return options_.lr; }
  const AdamWOptions& options() const { return options_; }
  int64_t steps() const { return steps_; }  // step() calls so far
  const NamedParameters& parameters() const { return params_; }

  // Everything needed to resume bit-exactly: "step" (int64 []) and per parameter
  // "<name>.step" (int64 []) plus the kind's moment tensors, and "<name>.master" (float32, the
  // parameter's shape) for non-float32 parameters (CPU copies).
  virtual std::map<std::string, at::Tensor> state_dict() const = 0;
  // Validates every key first (Error kShape for a missing, unexpected or mis-shaped entry,
  // kFormat for a wrong dtype or a NaN/Inf, each naming the key; "<name>.master" may be absent),
  // then copies into the existing buffers (so paged states stay in managed memory). Call it after
  // the parameters hold the checkpoint's values: master elements that do not round to their
  // parameter are taken from the parameter instead.
  virtual void load_state_dict(const std::map<std::string, at::Tensor>& state) = 0;
  // Exact bytes of the per-parameter state tensors (moments, 8-bit codes and absmax, float32
  // masters); step counters and the two 1 KiB code tables of the 8-bit kinds are not counted.
  virtual int64_t state_bytes() const = 0;

 protected:
  // Throws Error kConfig naming the recipe field ("training.lr", ...) for a bad option, and
  // kInternal for an undefined parameter or a repeated or empty name.
  Optimizer(NamedParameters named_params, const AdamWOptions& options);

  NamedParameters params_;
  AdamWOptions options_;
  int64_t steps_ = 0;
};

// kind: adamw | paged_adamw | adamw_8bit | paged_adamw_8bit; anything else is Error kConfig
// naming "training.optimizer".
std::unique_ptr<Optimizer> make_optimizer(const std::string& kind, NamedParameters named_params,
                                          const AdamWOptions& options);

}  // namespace qtrain

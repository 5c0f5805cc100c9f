// The optimizers the trainer uses, over named parameters (the names are the PEFT adapter keys, so
// they are stable across runs and key the checkpointed state):
//   adamw             torch.optim.AdamW, float32 states (adamw.h)
//   paged_adamw       the same math; on CUDA the large states live in managed memory
//   adamw_8bit        bitsandbytes' blockwise 8-bit AdamW (adamw_8bit.h, reference/formats.md §2)
//   paged_adamw_8bit  the same with managed-memory states on CUDA
// A checkpoint holds state_dict() and resumes bit-exactly through load_state_dict().
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
  // own step count does not advance, as in torch).
  virtual void step() = 0;
  // Sets every gradient to undefined (torch's set_to_none).
  void zero_grad();

  void set_lr(double lr);
  double lr() const { return options_.lr; }
  const AdamWOptions& options() const { return options_; }
  int64_t steps() const { return steps_; }  // step() calls so far
  const NamedParameters& parameters() const { return params_; }

  // Everything needed to resume bit-exactly: "step" (int64 []) and per parameter
  // "<name>.step" (int64 []) plus the kind's moment tensors (CPU copies).
  virtual std::map<std::string, at::Tensor> state_dict() const = 0;
  // Validates every key first (Error kShape for a missing, unexpected or mis-shaped entry,
  // kFormat for a wrong dtype, each naming the key), then copies into the existing buffers (so
  // paged states stay in managed memory).
  virtual void load_state_dict(const std::map<std::string, at::Tensor>& state) = 0;
  // Exact bytes of the per-parameter state tensors (moments, 8-bit codes and absmax); step
  // counters and the two 1 KiB code tables of the 8-bit kinds are not counted.
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

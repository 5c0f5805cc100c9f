// Float32 master weights of the parameters that are not float32 (the bf16 adapters by default;
// optimizer.h says why). Every optimizer updates the master in float32 and rounds it into the
// parameter once per step, so updates below the parameter dtype's resolution still accumulate.
//
// A master is taken from its parameter at the parameter's first update (not at construction, so
// adapter loading or a broadcast between construction and the first step is seen), and again
// after a load_state_dict without one. From then on the master is the value: writes to the
// parameter between steps are overwritten at its next update.
#pragma once

#include "trainer/optim/optimizer.h"
#include "trainer/optim/state_dict_reader.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace qtrain {

class MasterWeights {
 public:
  // A float32 buffer of the parameter's shape for every parameter that is not float32, from
  // allocate_state (so in managed memory when `paged` and large, on CUDA).
  MasterWeights(const NamedParameters& params, bool paged);

  bool has(size_t i) const { return masters_[i].defined(); }

  // The float32 tensor the update of parameter i runs on: the parameter itself when it is
  // float32, else its master (filled from the parameter if it is not yet initialised).
  at::Tensor update_target(size_t i, const at::Tensor& param);

  // Rounds the masters of the parameters `updated` (indices) into them: one _foreach_copy_ per
  // (device, dtype) group. Parameters without a master are skipped.
  void publish(const std::vector<size_t>& updated, NamedParameters& params) const;

  // Prefetches master i to its GPU when it lives in managed memory (state_memory.h).
  void prefetch(size_t i) const;

  // "<name>.master" (float32, the parameter's shape, a CPU copy) for every parameter with one;
  // a master not initialised yet is written as the parameter's float32 value.
  void add_to_state_dict(const NamedParameters& params,
                         std::map<std::string, at::Tensor>& out) const;

  // Takes the "<name>.master" entries that are present (validated like every entry: dtype,
  // shape, finite); returns one tensor per parameter, undefined where absent or float32.
  std::vector<at::Tensor> read_state_dict(const NamedParameters& params,
                                          StateDictReader& reader) const;
  // Installs what read_state_dict returned (after every other entry was validated). An absent
  // master is re-initialised from the parameter at its next update. Elements of a present master
  // that do not round to the parameter's current value (the adapter weights were replaced after
  // the checkpoint was written) are re-initialised from the parameter: call this after the
  // parameters hold the checkpoint's values.
  void load(const NamedParameters& params, const std::vector<at::Tensor>& loaded);

  int64_t bytes() const;
  // The live master buffers (undefined for float32 parameters), for memory checks.
  const std::vector<at::Tensor>& buffers() const { return masters_; }

 private:
  std::vector<at::Tensor> masters_;  // parallel to the parameters
  std::vector<bool> initialised_;
};

}  // namespace qtrain

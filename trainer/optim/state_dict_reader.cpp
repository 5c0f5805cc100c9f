#include "trainer/optim/state_dict_reader.h"

#include "core/error.h"
#include "core/finite.h"
#include "core/shape_string.h"

#include <ATen/ATen.h>

namespace qtrain {

const at::Tensor& StateDictReader::take(const std::string& key, at::ScalarType dtype,
                                        at::IntArrayRef shape) {
  const auto it = state_.find(key);
  if (it == state_.end() || !it->second.defined()) {
    throw_error(ErrorKind::kShape, "optimizer state entry missing", {.tensor = key});
  }
  const at::Tensor& t = it->second;
  if (t.scalar_type() != dtype) {
    throw_error(ErrorKind::kFormat,
                std::string("optimizer state entry has dtype ") + c10::toString(t.scalar_type()) +
                    ", expected " + c10::toString(dtype),
                {.tensor = key});
  }
  if (t.sizes() != shape) {
    throw_error(ErrorKind::kShape,
                "optimizer state entry has shape " + shape_string(t.sizes()) + ", expected " +
                    shape_string(shape),
                {.tensor = key});
  }
  // A NaN in a moment would otherwise reach the adapters on the first step and be blamed on the
  // data or the learning rate.
  if (!all_finite(t)) {
    throw_error(ErrorKind::kFormat, "optimizer state entry holds NaN or Inf values",
                {.tensor = key});
  }
  taken_.insert(key);
  return t;
}

const at::Tensor* StateDictReader::take_if_present(const std::string& key, at::ScalarType dtype,
                                                   at::IntArrayRef shape) {
  if (state_.count(key) == 0) return nullptr;
  return &take(key, dtype, shape);
}

int64_t StateDictReader::take_step(const std::string& key) {
  const int64_t step = take(key, at::kLong, {}).item<int64_t>();
  if (step < 0) {
    throw_error(ErrorKind::kFormat, "negative optimizer step " + std::to_string(step),
                {.tensor = key});
  }
  return step;
}

void StateDictReader::reject_unexpected() const {
  for (const auto& [key, tensor] : state_) {
    if (taken_.count(key) == 0) {
      throw_error(ErrorKind::kShape,
                  "unexpected optimizer state entry (a parameter this run does not train, or the "
                  "state of another optimizer kind)",
                  {.tensor = key});
    }
  }
}

at::Tensor step_tensor(int64_t step) {
  return at::scalar_tensor(step, at::kLong);
}

}  // namespace qtrain

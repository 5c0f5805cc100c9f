#include "trainer/loss_scaler.h"

#include "core/error.h"

#include <ATen/ATen.h>

#include <cmath>
#include <string>

namespace qtrain {

bool LossScaler::update(bool gradients_finite) {
  if (!enabled_) return true;
  if (gradients_finite) {
    if (++good_steps_ >= kGrowthInterval) {
      scale_ *= kGrowthFactor;
      good_steps_ = 0;
    }
    return true;
  }
  good_steps_ = 0;
  if (scale_ <= kMinScale) return true;  // not the scale's fault: let the caller report it
  scale_ *= kBackoffFactor;
  return false;
}

void LossScaler::restore(double scale, int64_t good_steps, const char* file) {
  if (!enabled_) return;
  if (!std::isfinite(scale) || scale <= 0 || good_steps < 0) {
    throw_error(ErrorKind::kFormat,
                "loss scale " + std::to_string(scale) + " after " + std::to_string(good_steps) +
                    " good steps is not a state a run can reach",
                {.file = file, .field = "loss_scale"});
  }
  scale_ = scale;
  good_steps_ = good_steps;
}

void unscale_gradients(const std::vector<at::Tensor>& params, double scale) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (!grads.empty()) at::_foreach_mul_(grads, 1.0 / scale);
}

}  // namespace qtrain

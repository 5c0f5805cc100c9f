// Dynamic loss scaling for float16 models, with torch.amp.GradScaler's defaults: the loss is
// multiplied by `scale` before backward so small float16 gradients do not flush to zero; the
// gradients are divided by it again before clipping. A step whose gradients overflowed is skipped
// and the scale halved; after 2000 steps in a row without overflow it doubles.
// bfloat16 and float32 have float32's exponent range and need none of this: the scaler is then
// disabled and scale() is 1.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace qtrain {

class LossScaler {
 public:
  static constexpr double kInitialScale = 65536.0;
  static constexpr double kGrowthFactor = 2.0;
  static constexpr double kBackoffFactor = 0.5;
  static constexpr int64_t kGrowthInterval = 2000;
  // Below this the gradients are not overflowing from the scale: something else is non-finite.
  static constexpr double kMinScale = 1.0;

  explicit LossScaler(bool enabled) : enabled_(enabled), scale_(enabled ? kInitialScale : 1.0) {}

  bool enabled() const { return enabled_; }
  double scale() const { return scale_; }
  int64_t good_steps() const { return good_steps_; }

  // After a step's gradients were checked: finite ones count towards growth; an overflow halves
  // the scale. Returns false when the step must be skipped for an overflow the scale explains
  // (enabled and the scale still above kMinScale).
  bool update(bool gradients_finite);

  // From a checkpoint; Error kFormat naming `file` for a scale that is not finite and > 0 or a
  // negative count.
  void restore(double scale, int64_t good_steps, const char* file);

 private:
  bool enabled_;
  double scale_;
  int64_t good_steps_ = 0;
};

// Divides every defined .grad() of `params` by `scale`, on their device (one multi-tensor op).
void unscale_gradients(const std::vector<at::Tensor>& params, double scale);

}  // namespace qtrain

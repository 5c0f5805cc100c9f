#include "trainer/optim/lr_scheduler.h"

#include "core/error.h"

#include <algorithm>
#include <cmath>

namespace qtrain {
namespace {

constexpr double kPi = 3.141592653589793;  // math.pi
constexpr double kNumCycles = 0.5;         // transformers' default for cosine

void require(bool ok, const std::string& field, const std::string& message) {
  if (!ok) throw_error(ErrorKind::kConfig, message, {.field = "training." + field});
}

// The decay factor after warmup, before min_lr_ratio.
double decay_factor(const ScheduleOptions& o, int64_t step) {
  const double span = static_cast<double>(std::max<int64_t>(1, o.total_steps - o.warmup_steps));
  if (o.kind == "linear") {
    return std::max(0.0, static_cast<double>(o.total_steps - step) / span);
  }
  const double progress = static_cast<double>(step - o.warmup_steps) / span;
  return 0.5 * (1.0 + std::cos(kPi * kNumCycles * 2.0 * progress));
}

}  // namespace

void validate_schedule(const ScheduleOptions& o) {
  require(o.kind == "constant" || o.kind == "linear" || o.kind == "cosine", "scheduler",
          "unknown scheduler '" + o.kind + "' (expected constant, linear or cosine)");
  require(std::isfinite(o.base_lr) && o.base_lr >= 0, "lr", "lr must be finite and >= 0");
  require(o.warmup_steps >= 0, "warmup_steps", "warmup_steps must be >= 0");
  require(o.total_steps >= 0, "max_steps", "the total number of steps must be >= 0");
  require(std::isfinite(o.min_lr_ratio) && o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1,
          "min_lr_ratio", "min_lr_ratio must be in [0, 1]");
}

double lr_at(const ScheduleOptions& o, int64_t step) {
  validate_schedule(o);
  if (step < 0) throw_error(ErrorKind::kInternal, "lr_at: negative step");
  if (step < o.warmup_steps) {
    // transformers divides by max(1.0, W) for constant and max(1, W) for the others: equal.
    return o.base_lr *
           (static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, o.warmup_steps)));
  }
  if (o.kind == "constant") return o.base_lr * 1.0;
  double factor = decay_factor(o, step);
  if (o.min_lr_ratio > 0) factor = std::max(0.0, factor * (1 - o.min_lr_ratio) + o.min_lr_ratio);
  return o.base_lr * factor;
}

}  // namespace qtrain

// Learning-rate schedules with Hugging Face transformers' formulas (optimization.py), evaluated
// for a 0-based optimizer step: the lr that the step-th optimizer.step() uses, as
// LambdaLR(optimizer, lambda) gives it, base_lr * lambda(step). With W warmup and T total steps:
//   warmup (all kinds)  step < W:  step / max(1, W)
//   constant            1
//   linear              max(0, (T - step) / max(1, T - W))
//   cosine              max(0, 0.5 * (1 + cos(pi * 2 * 0.5 * (step - W) / max(1, T - W))))
// A min_lr_ratio r > 0 lifts the decay to r + (1 - r) * factor, floored at 0 (transformers'
// get_cosine_with_min_lr_schedule_with_warmup with min_lr_rate = r; the same rule for linear,
// which transformers lacks). Constant ignores it.
#pragma once

#include <cstdint>
#include <string>

namespace qtrain {

struct ScheduleOptions {
  std::string kind;  // constant | linear | cosine
  double base_lr = 0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;
  double min_lr_ratio = 0;
};

// Error kConfig naming the recipe field (training.scheduler, training.warmup_steps, ...) for an
// unknown kind or a negative or non-finite value.
void validate_schedule(const ScheduleOptions& options);

// Validates the options, then returns the lr of 0-based optimizer step `step` (>= 0).
double lr_at(const ScheduleOptions& options, int64_t step);

}  // namespace qtrain

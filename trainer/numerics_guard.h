// Numerical trouble in a training step, said in terms a user can act on: which step, which
// samples (their file:line), what went wrong, and what to try.
//
//   * all-masked micro-batches: no label left to learn from (responses cut by max_seq_len, or a
//     format that masks everything);
//   * non-finite values: the loss of a micro-batch, its logits (the activations the loss sees),
//     or a parameter's gradient;
//   * loss spikes: a step's loss more than `factor` times the running mean of the steps before.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

// Spike detection over the step losses: an exponential moving average (weight `alpha` on the
// newest loss) and a report when a loss exceeds `factor` times it, once `warmup` losses are in.
// State (mean, count) is saved in checkpoints so a resumed run flags the same steps.
class LossSpikeDetector {
 public:
  explicit LossSpikeDetector(double factor = 2.0, int64_t warmup = 10, double alpha = 0.1)
      : factor_(factor), warmup_(warmup), alpha_(alpha) {}

  // The running mean `loss` is compared with when it is a spike, else nullopt. Either way the
  // loss is then folded into the mean (a real shift in the data is followed, not re-reported).
  std::optional<double> observe(double loss);

  double mean() const { return mean_; }
  int64_t count() const { return count_; }
  void restore(double mean, int64_t count) {
    mean_ = mean;
    count_ = count;
  }

 private:
  double factor_;
  int64_t warmup_;
  double alpha_;
  double mean_ = 0;
  int64_t count_ = 0;
};

// "a.jsonl:3, a.jsonl:17 and 5 more" (at most `shown` named).
std::string describe_samples(const std::vector<std::string>& origins, size_t shown = 8);

// The name of the first gradient in `grads` (same order as `names`) holding NaN or Inf, or "".
std::string first_nonfinite_gradient(const std::vector<std::string>& names,
                                     const std::vector<at::Tensor>& params);

}  // namespace qtrain

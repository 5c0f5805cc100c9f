#include "data/split.h"

#include "core/error.h"
#include "data/shuffle.h"

#include <algorithm>
#include <cmath>

namespace qtrain {

void split_train_eval(std::vector<Example>& all, double eval_fraction, int64_t eval_max,
                      uint64_t seed, std::vector<Example>* train, std::vector<Example>* eval) {
  if (!(eval_fraction >= 0.0 && eval_fraction < 1.0)) {
    throw_error(ErrorKind::kConfig,
                "eval fraction must be in [0, 1), got " + std::to_string(eval_fraction));
  }
  const auto n = static_cast<int64_t>(all.size());
  int64_t eval_count = std::llround(eval_fraction * static_cast<double>(n));
  if (eval_fraction > 0.0 && n >= 2) eval_count = std::max<int64_t>(eval_count, 1);
  if (eval_max > 0) eval_count = std::min(eval_count, eval_max);
  eval_count = std::min(eval_count, std::max<int64_t>(n - 1, 0));

  std::vector<bool> is_eval(all.size(), false);
  const std::vector<int64_t> order = shuffled_indices(n, mix_seed(seed, /*stream=*/0x5e1));
  for (int64_t i = 0; i < eval_count; ++i) is_eval[order[i]] = true;

  train->clear();
  eval->clear();
  for (int64_t i = 0; i < n; ++i) (is_eval[i] ? eval : train)->push_back(std::move(all[i]));
  all.clear();
}

}  // namespace qtrain

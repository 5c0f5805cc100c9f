// Train / eval split of the examples, deterministic by seed.
#pragma once

#include "data/examples.h"

#include <cstdint>
#include <vector>

namespace qtrain {

// Moves a random eval_fraction of `all` (rounded, at least 1 when eval_fraction > 0 and there are
// at least 2 examples, at most eval_max when eval_max > 0, and never all of them) into `eval`, the
// rest into `train`; both keep the original order. `all` is left empty. The same seed and input
// give the same split. Throws Error(kConfig) unless 0 <= eval_fraction < 1.
void split_train_eval(std::vector<Example>& all, double eval_fraction, int64_t eval_max,
                      uint64_t seed, std::vector<Example>* train, std::vector<Example>* eval);

}  // namespace qtrain

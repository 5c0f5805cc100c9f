// Deterministic randomness that is identical on every platform and standard library:
// std::mt19937_64 (its output is fixed by the C++ standard), an unbiased bounded draw by
// rejection, and Fisher-Yates written out, since std::shuffle and std::uniform_int_distribution
// use implementation-defined algorithms.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace qtrain {

// A seed for stream `stream` (an epoch, a purpose) of `seed`: splitmix64 mixing, so nearby
// inputs give unrelated generators.
uint64_t mix_seed(uint64_t seed, uint64_t stream);

// Uniform in [0, bound); bound > 0.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound);

// A uniformly random permutation of 0..n-1 from `seed`.
std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed);

}  // namespace qtrain

// Integer helpers shared by host code and the CUDA sources (constexpr, so nvcc's
// --expt-relaxed-constexpr lets device code call them too). No ATen here.
#pragma once

#include <cstdint>

namespace qtrain {

// ceil(a / b) for a >= 0, b > 0.
constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace qtrain

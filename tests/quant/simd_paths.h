// Test helpers for the vectorized CPU kernels (quant/blockwise_cpu.h SimdPath): forcing a path for
// a scope, the paths this CPU has, and the raw inputs and outputs the tests compare.
#pragma once

#include "quant/blockwise_cpu.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace qtrain::testing {

// Forces a path for one scope.
class ForcedPath {
 public:
  explicit ForcedPath(cpu::SimdPath path) { cpu::set_simd_path(path); }
  ~ForcedPath() { cpu::set_simd_path(cpu::SimdPath::kAuto); }
  ForcedPath(const ForcedPath&) = delete;
  ForcedPath& operator=(const ForcedPath&) = delete;
};

// The vectorized paths this CPU runs (none on a CPU without AVX2: then only the scalar one).
inline std::vector<cpu::SimdPath> vector_paths() {
  std::vector<cpu::SimdPath> out;
  for (cpu::SimdPath p : {cpu::SimdPath::kAvx2, cpu::SimdPath::kAvx512}) {
    if (cpu::simd_path_supported(p)) out.push_back(p);
  }
  return out;
}

inline at::Tensor floats(const std::vector<float>& v) {
  return at::tensor(at::ArrayRef<float>(v), at::kFloat);
}

inline float from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline std::vector<uint8_t> raw_bytes(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  return {p, p + c.nbytes()};
}

}  // namespace qtrain::testing

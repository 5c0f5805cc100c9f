#include "quant/codebooks.h"

#include "quant/codebook_tables.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

namespace qtrain {
namespace {

// The NF4 table and the raw FP4 values (quant/codebook_tables.h) as arrays.
constexpr std::array<float, codebook::kNF4Values> kNF4 =
    codebook::table<float, codebook::kNF4Values>(codebook::nf4_value);
constexpr std::array<float, codebook::kFP4Values> kFP4Raw =
    codebook::table<float, codebook::kFP4Values>(codebook::fp4_raw_value);

at::Tensor to_tensor(const float* values, int64_t count) {
  return at::from_blob(const_cast<float*>(values), {count}, at::kFloat).clone();
}

// torch.linspace(0.1, 1, steps, dtype=float32) on x86: torch's AVX2/AVX-512 kernels compute
// start + step * i (first half) and end - step * (steps - 1 - i) (second half) with a fused
// multiply-add. The plain-C++ rounding differs from bitsandbytes' stored maps in the last bit of
// ~40 entries, so the fma is part of the format.
std::vector<float> linspace_01_1(int steps) {
  const float start = 0.1f;
  const float end = 1.0f;
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int halfway = steps / 2;
  std::vector<float> values(steps);
  for (int i = 0; i < steps; ++i) {
    values[i] = i < halfway ? std::fma(step, static_cast<float>(i), start)
                            : std::fma(-step, static_cast<float>(steps - 1 - i), end);
  }
  return values;
}

// bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): for exponent
// i = 0..6, the midpoints of linspace(0.1, 1, n_i + 1) scaled by 10^(i-6), with n_i = 2^i
// (signed, plus their negations) or 2^(i+1) (unsigned); then 0 and 1.0; sorted. All float32.
std::array<float, 256> dynamic_map(bool is_signed) {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int items = is_signed ? (1 << i) : (2 << i);
    const std::vector<float> bounds = linspace_01_1(items + 1);
    const float scale = static_cast<float>(std::pow(10.0, i - 6));
    for (int k = 0; k < items; ++k) {
      const float mean = (bounds[k] + bounds[k + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  std::array<float, 256> map{};
  std::copy(data.begin(), data.end(), map.begin());
  return map;
}

}  // namespace

at::Tensor nf4_code() {
  return to_tensor(kNF4.data(), 16);
}

at::Tensor fp4_code() {
  std::array<float, 16> code{};
  for (size_t i = 0; i < code.size(); ++i) code[i] = kFP4Raw[i] / 12.0f;
  return to_tensor(code.data(), 16);
}

at::Tensor dynamic_code_signed() {
  static const std::array<float, 256> map = dynamic_map(true);
  return to_tensor(map.data(), 256);
}

at::Tensor dynamic_code_unsigned() {
  static const std::array<float, 256> map = dynamic_map(false);
  return to_tensor(map.data(), 256);
}

}  // namespace qtrain

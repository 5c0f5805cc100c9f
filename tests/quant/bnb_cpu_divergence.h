// Where bitsandbytes 0.50's CPU path may give other codes than its CUDA kernels, which qtrain
// follows. Interop tests compare qtrain with bnb on CPU code by code and accept a difference only
// when it falls in one of these narrow, documented zones:
//  - 4-bit (backends/default quantize_4bit, pure torch): the last, partial block is normalized
//    as x / absmax instead of x * (1 / absmax);
//  - FP4: it buckets by the float32 midpoints of the sorted code table, where +0 sorts before -0:
//    values in (0, 0.0026] get -0 (0b1000) and values in (-0.0026, 0) get +0, the reverse of
//    CUDA's sign bit; and its other midpoints differ from CUDA's literal thresholds (0.583333f
//    vs 0.58333337f ...) by a few ulps;
//  - nested absmax (libbitsandbytes_cpu quantize_blockwise): the normalized value is first
//    rounded onto a 65536-step grid over [-1, 1] and a lookup table gives the code of the grid
//    point, so a value within half a step (1.5e-5) of a code midpoint may get the neighbour.
#pragma once

#include "quant/blockwise.h"
#include "quant/codebooks.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace qtrain::testing {

struct Divergences {
  int64_t partial_block_division = 0;
  int64_t fp4_zero_sign = 0;
  int64_t fp4_threshold = 0;
  int64_t nested_lut = 0;
  int64_t unexplained = 0;
  int64_t total() const {
    return partial_block_division + fp4_zero_sign + fp4_threshold + nested_lut + unexplained;
  }
};

// Packed uint8 [(n+1)/2] (element 2k in the high nibble) -> uint8 [n].
inline std::vector<uint8_t> unpack_nibbles(const at::Tensor& packed, int64_t n) {
  const at::Tensor bytes = packed.to(at::kCPU).contiguous().view(-1);
  const uint8_t* p = bytes.data_ptr<uint8_t>();
  std::vector<uint8_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = i % 2 == 0 ? p[i / 2] >> 4 : p[i / 2] & 0xF;
  return out;
}

inline bool between(float v, float a, float b) {
  return std::min(a, b) <= v && v <= std::max(a, b);
}

// Compares qtrain's and bnb's 4-bit codes of `x` (absmax float32 [nblocks], equal on both
// sides); reports unexplained differences as test failures.
inline Divergences compare_4bit_codes(const at::Tensor& x, QuantType type, int64_t blocksize,
                                      const at::Tensor& absmax, const at::Tensor& ours_packed,
                                      const at::Tensor& bnb_packed, const std::string& label) {
  const int64_t n = x.numel();
  const at::Tensor xf = x.to(at::kFloat).contiguous().view(-1);
  const at::Tensor am = absmax.to(at::kFloat).contiguous();
  const float* xp = xf.data_ptr<float>();
  const float* ap = am.data_ptr<float>();
  const std::vector<uint8_t> ours = unpack_nibbles(ours_packed, n);
  const std::vector<uint8_t> bnb = unpack_nibbles(bnb_packed, n);

  // CUDA's literal FP4 magnitude thresholds and bnb-CPU's float32 midpoints of the sorted table.
  const float cuda_fp4[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                             0.4166667f,  0.583333f,  0.8333333f};
  std::vector<float> magnitudes;
  const at::Tensor fp4 = fp4_code();
  for (int i = 0; i < 8; ++i) magnitudes.push_back(fp4[i].item<float>());
  std::sort(magnitudes.begin(), magnitudes.end());

  Divergences d;
  const bool has_partial = n % blocksize != 0;
  for (int64_t i = 0; i < n; ++i) {
    if (ours[i] == bnb[i]) continue;
    const int64_t block = i / blocksize;
    const float inv = 1.0f / ap[block];
    const float xn = xp[i] * inv;
    if (has_partial && block == (n - 1) / blocksize && xn != xp[i] / ap[block]) {
      ++d.partial_block_division;
      continue;
    }
    if (type == QuantType::kFP4 && (ours[i] & 7) == 0 && (bnb[i] & 7) == 0) {
      ++d.fp4_zero_sign;
      continue;
    }
    bool near_threshold = false;
    if (type == QuantType::kFP4) {
      for (int k = 0; k < 7; ++k) {
        const float cpu_mid = (magnitudes[k] + magnitudes[k + 1]) / 2;
        near_threshold |= between(std::fabs(xn), cuda_fp4[k], cpu_mid);
      }
    }
    if (near_threshold) {
      ++d.fp4_threshold;
      continue;
    }
    if (++d.unexplained <= 10) {
      ADD_FAILURE() << label << ": element " << i << " x=" << xp[i] << " absmax=" << ap[block]
                    << " x/absmax=" << xn << " qtrain code " << int(ours[i]) << " bnb code "
                    << int(bnb[i]);
    }
  }
  return d;
}

// Compares the nested (8-bit) absmax codes; `absmax` is the float32 absmax before double
// quantization, `offset` and `nested_absmax` are equal on both sides.
inline Divergences compare_nested_codes(const at::Tensor& absmax, float offset,
                                        const at::Tensor& nested_absmax, int64_t nested_blocksize,
                                        const at::Tensor& ours_codes, const at::Tensor& bnb_codes,
                                        const std::string& label) {
  const at::Tensor centered = (absmax.to(at::kFloat) - offset).contiguous();
  const at::Tensor nmax = nested_absmax.to(at::kFloat).contiguous();
  const at::Tensor ours = ours_codes.to(at::kCPU).contiguous();
  const at::Tensor bnb = bnb_codes.to(at::kCPU).contiguous();
  const at::Tensor code = dynamic_code_signed();
  std::vector<float> midpoints;
  for (int64_t k = 0; k + 1 < code.numel(); ++k) {
    midpoints.push_back(0.5f * (code[k].item<float>() + code[k + 1].item<float>()));
  }
  // The grid point bnb's table looks up for v, with and without a fused multiply-add (the
  // library's compiler may contract the expression).
  auto grid = [](float v, bool fused) {
    const float t = (std::clamp(v, -1.0f, 1.0f) + 1.0f) * 0.5f;
    const float index = fused ? std::fma(t, 65535.0f, 0.5f) : t * 65535.0f + 0.5f;
    return -1.0f + (2.0f * static_cast<float>(static_cast<uint16_t>(index))) / 65535.0f;
  };

  Divergences d;
  const float* c = centered.data_ptr<float>();
  for (int64_t b = 0; b < centered.numel(); ++b) {
    const uint8_t q_ours = ours.data_ptr<uint8_t>()[b];
    const uint8_t q_bnb = bnb.data_ptr<uint8_t>()[b];
    if (q_ours == q_bnb) continue;
    const float v = c[b] * (1.0f / nmax.data_ptr<float>()[b / nested_blocksize]);
    const float lo = std::min({v, grid(v, false), grid(v, true)});
    const float hi = std::max({v, grid(v, false), grid(v, true)});
    const bool explained = std::any_of(midpoints.begin(), midpoints.end(),
                                       [&](float m) { return lo <= m && m <= hi; });
    if (explained) {
      ++d.nested_lut;
    } else if (++d.unexplained <= 10) {
      ADD_FAILURE() << label << ": nested absmax " << b << " normalized " << v << " qtrain code "
                    << int(q_ours) << " bnb code " << int(q_bnb);
    }
  }
  return d;
}

}  // namespace qtrain::testing

// Bit-exactness with ggml needs the same float operations in the same order: every expression
// below keeps ggml-quants.c's evaluation order, and this file is compiled with
// -ffp-contract=off (quant/CMakeLists.txt) so that no a*b+c becomes an FMA.
#include "quant/ggml/q6_k.h"

#include "quant/ggml/block_rows.h"
#include "quant/ggml/ggml_fp16.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qtrain {
namespace {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS: a sub-block this small is zero

// Signed scale for n values on the grid -nmax..nmax-1 with weights x^2 (make_qx_quants with
// rmse_type 1): starts from scale = max/-nmax, then tries 18 nearby scales and keeps the one with
// the best weighted least-squares fit. L gets q + nmax. Returns the scale (0 for an all-zero x).
float make_qx_quants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0;
  float amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.f;
  }
  auto fit = [&](float iscale, float& sumlx, float& suml2) {
    sumlx = 0;
    suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(ggml_nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
  };
  auto assign = [&](float iscale) {
    for (int i = 0; i < n; ++i) {
      L[i] =
          static_cast<int8_t>(nmax + std::clamp(ggml_nearest_int(iscale * x[i]), -nmax, nmax - 1));
    }
  };
  float iscale = -nmax / max;
  float sumlx, suml2;
  fit(iscale, sumlx, suml2);
  assign(iscale);
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    fit(iscale, sumlx, suml2);
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      assign(iscale);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Per half of 128: ql holds the low nibbles of q[l] / q[l+64] (bytes l) and q[l+32] / q[l+96]
// (bytes l+32); qh byte l holds the top 2 bits of q[l], q[l+32], q[l+64], q[l+96].
void pack_q6_k_quants(const int8_t* L, uint8_t* ql, uint8_t* qh) {
  for (int h = 0; h < 2; ++h) {
    const int8_t* Lh = L + 128 * h;
    uint8_t* qlh = ql + 64 * h;
    uint8_t* qhh = qh + 32 * h;
    for (int l = 0; l < 32; ++l) {
      const uint8_t q1 = Lh[l], q2 = Lh[l + 32], q3 = Lh[l + 64], q4 = Lh[l + 96];
      qlh[l] = static_cast<uint8_t>((q1 & 0xF) | ((q3 & 0xF) << 4));
      qlh[l + 32] = static_cast<uint8_t>((q2 & 0xF) | ((q4 & 0xF) << 4));
      qhh[l] =
          static_cast<uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

// One Q6_K block: 256 values -> 210 bytes.
BlockQ6_K q6_k_block(const float* x) {
  BlockQ6_K block{};
  int8_t L[kQkK];
  float scales[16];
  float max_scale = 0;
  float max_abs_scale = 0;
  for (int ib = 0; ib < 16; ++ib) {
    scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
    const float abs_scale = std::fabs(scales[ib]);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scales[ib];
    }
  }
  if (max_abs_scale < kGroupMaxEps) return block;  // all zero
  const float iscale = -128.f / max_scale;
  block.d = ggml_fp16_bits(1 / iscale);
  for (int ib = 0; ib < 16; ++ib) {
    block.scales[ib] = static_cast<int8_t>(std::min(127, ggml_nearest_int(iscale * scales[ib])));
  }
  const float d_all = ggml_fp16_value(block.d);
  for (int j = 0; j < 16; ++j) {
    const float d = d_all * block.scales[j];
    if (!d) continue;
    for (int ii = 0; ii < 16; ++ii) {
      const int l = std::clamp(ggml_nearest_int(x[16 * j + ii] / d), -32, 31);
      L[16 * j + ii] = static_cast<int8_t>(l + 32);
    }
  }
  pack_q6_k_quants(L, block.ql, block.qh);
  return block;
}

}  // namespace

void quantize_q6_k(const float* x, uint8_t* out, int64_t n) {
  quantize_blocks<kQkK>(x, out, n, q6_k_block);
}

}  // namespace qtrain

// Bit-exactness with ggml needs the same float operations in the same order: every expression
// below keeps ggml-quants.c's evaluation order, and this file is compiled with
// -ffp-contract=off (models/CMakeLists.txt) so that no a*b+c becomes an FMA.
#include "models/gguf_kquants.h"

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qtrain {
namespace {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS: a sub-block this small is zero

void put_f16(uint8_t* p, float v) {
  const uint16_t bits = ggml_fp16_bits(v);
  std::memcpy(p, &bits, 2);
}

float get_f16(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return ggml_fp16_value(bits);
}

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

// Scale and min for n values on the grid 0..nmax (make_qkx2_quants with use_mad = false):
// x ~ scale*L + min with min <= 0, fitted by weighted least squares over nstep+1 trial grids
// (rmin + rdelta*is + nmax steps across [min, max]). Returns the scale; *the_min = -min >= 0.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                       float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(L, L + n, 0);
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = ggml_nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::clamp(l, 0, nmax));
    float diff = scale * L[i] + min - x[i];
    diff = diff * diff;
    best_error += weights[i] * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(ggml_nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        std::copy(Laux, Laux + n, L);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// One Q4_K block: 256 values -> 144 bytes.
void q4_k_block(const float* x, uint8_t* block) {
  uint8_t* scales_out = block + 4;
  uint8_t* qs = block + 16;
  uint8_t L[kQkK];
  uint8_t Laux[32];
  float weights[32];
  float mins[8];
  float scales[8];
  float max_scale = 0;  // the min is subtracted, so scales are positive
  float max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xj = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xj[l] * xj[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xj[l]);
    scales[j] = make_qkx2_quants(32, 15, xj, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  // 6-bit scale/min j: j < 4 in the low 6 bits of bytes j / j+4; j >= 4 as nibbles of byte j+4
  // with their top 2 bits in the spare high bits of bytes j-4 / j.
  uint8_t sc6[8], m6[8];
  for (int j = 0; j < 8; ++j) {
    // ggml stores nearest_int's result in a uint8_t before the min (wrapping a negative one).
    sc6[j] = std::min<uint8_t>(63, static_cast<uint8_t>(ggml_nearest_int(inv_scale * scales[j])));
    m6[j] = std::min<uint8_t>(63, static_cast<uint8_t>(ggml_nearest_int(inv_min * mins[j])));
  }
  for (int j = 0; j < 4; ++j) {
    scales_out[j] = static_cast<uint8_t>(sc6[j] | ((sc6[j + 4] >> 4) << 6));
    scales_out[j + 4] = static_cast<uint8_t>(m6[j] | ((m6[j + 4] >> 4) << 6));
    scales_out[j + 8] = static_cast<uint8_t>((sc6[j + 4] & 0xF) | ((m6[j + 4] & 0xF) << 4));
  }
  put_f16(block, max_scale / 63.f);
  put_f16(block + 2, max_min / 63.f);

  // Requantize against the stored (fp16, 6-bit) scales; a zero scale keeps the first fit's q.
  const float d_all = get_f16(block);
  const float dmin_all = get_f16(block + 2);
  for (int j = 0; j < 8; ++j) {
    const float d = d_all * sc6[j];
    if (!d) continue;
    const float dm = dmin_all * m6[j];
    for (int ii = 0; ii < 32; ++ii) {
      const int l = ggml_nearest_int((x[32 * j + ii] + dm) / d);
      L[32 * j + ii] = static_cast<uint8_t>(std::clamp(l, 0, 15));
    }
  }
  // 4 chunks of 32 bytes: low nibbles = values 64c..64c+31, high nibbles = the next 32.
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + l + 32] << 4));
    }
  }
}

// One Q6_K block: 256 values -> 210 bytes.
void q6_k_block(const float* x, uint8_t* block) {
  uint8_t* ql = block;
  uint8_t* qh = block + 128;
  int8_t* scales_out = reinterpret_cast<int8_t*>(block + 192);
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
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(block, 0, 210);
    return;
  }
  const float iscale = -128.f / max_scale;
  put_f16(block + 208, 1 / iscale);
  for (int ib = 0; ib < 16; ++ib) {
    scales_out[ib] = static_cast<int8_t>(std::min(127, ggml_nearest_int(iscale * scales[ib])));
  }
  const float d_all = get_f16(block + 208);
  for (int j = 0; j < 16; ++j) {
    const float d = d_all * scales_out[j];
    if (!d) continue;
    for (int ii = 0; ii < 16; ++ii) {
      const int l = std::clamp(ggml_nearest_int(x[16 * j + ii] / d), -32, 31);
      L[16 * j + ii] = static_cast<int8_t>(l + 32);
    }
  }
  // Per half of 128: ql holds the low nibbles of q[l] / q[l+64] (bytes l) and q[l+32] / q[l+96]
  // (bytes l+32); qh byte l holds the top 2 bits of q[l], q[l+32], q[l+64], q[l+96].
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

}  // namespace

int ggml_nearest_int(float v) {
  const float shifted = v + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  return (bits & 0x007fffff) - 0x00400000;
}

uint16_t ggml_fp16_bits(float v) {
  return c10::Half(v).x;
}

float ggml_fp16_value(uint16_t bits) {
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

void quantize_q4_k(const float* x, uint8_t* out, int64_t n) {
  for (int64_t b = 0; b < n / kQkK; ++b) q4_k_block(x + b * kQkK, out + b * 144);
}

void quantize_q6_k(const float* x, uint8_t* out, int64_t n) {
  for (int64_t b = 0; b < n / kQkK; ++b) q6_k_block(x + b * kQkK, out + b * 210);
}

}  // namespace qtrain

// Bit-exactness with ggml needs the same float operations in the same order: every expression
// below keeps ggml-quants.c's evaluation order, and this file is compiled with
// -ffp-contract=off (quant/CMakeLists.txt) so that no a*b+c becomes an FMA.
#include "quant/ggml/q4_k.h"

#include "quant/ggml/block_rows.h"
#include "quant/ggml/ggml_fp16.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qtrain {
namespace {

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

// 6-bit scale/min j: j < 4 in the low 6 bits of bytes j / j+4; j >= 4 as nibbles of byte j+4
// with their top 2 bits in the spare high bits of bytes j-4 / j.
void pack_q4_k_scales(const uint8_t* sc6, const uint8_t* m6, uint8_t* scales) {
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<uint8_t>(sc6[j] | ((sc6[j + 4] >> 4) << 6));
    scales[j + 4] = static_cast<uint8_t>(m6[j] | ((m6[j + 4] >> 4) << 6));
    scales[j + 8] = static_cast<uint8_t>((sc6[j + 4] & 0xF) | ((m6[j + 4] & 0xF) << 4));
  }
}

// 4 chunks of 32 bytes: low nibbles = values 64c..64c+31, high nibbles = the next 32.
void pack_q4_k_quants(const uint8_t* L, uint8_t* qs) {
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + l + 32] << 4));
    }
  }
}

// One Q4_K block: 256 values -> 144 bytes.
BlockQ4_K q4_k_block(const float* x) {
  BlockQ4_K block;
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
  uint8_t sc6[8], m6[8];
  for (int j = 0; j < 8; ++j) {
    // ggml stores nearest_int's result in a uint8_t before the min (wrapping a negative one).
    sc6[j] = std::min<uint8_t>(63, static_cast<uint8_t>(ggml_nearest_int(inv_scale * scales[j])));
    m6[j] = std::min<uint8_t>(63, static_cast<uint8_t>(ggml_nearest_int(inv_min * mins[j])));
  }
  pack_q4_k_scales(sc6, m6, block.scales);
  block.d = ggml_fp16_bits(max_scale / 63.f);
  block.dmin = ggml_fp16_bits(max_min / 63.f);

  // Requantize against the stored (fp16, 6-bit) scales; a zero scale keeps the first fit's q.
  const float d_all = ggml_fp16_value(block.d);
  const float dmin_all = ggml_fp16_value(block.dmin);
  for (int j = 0; j < 8; ++j) {
    const float d = d_all * sc6[j];
    if (!d) continue;
    const float dm = dmin_all * m6[j];
    for (int ii = 0; ii < 32; ++ii) {
      const int l = ggml_nearest_int((x[32 * j + ii] + dm) / d);
      L[32 * j + ii] = static_cast<uint8_t>(std::clamp(l, 0, 15));
    }
  }
  pack_q4_k_quants(L, block.qs);
  return block;
}

}  // namespace

void quantize_q4_k(const float* x, uint8_t* out, int64_t n) {
  quantize_blocks<kQkK>(x, out, n, q4_k_block);
}

}  // namespace qtrain

// Bit-exact with ggml: compiled with -ffp-contract=off (quant/CMakeLists.txt). The scale d is
// computed in float32 and used unrounded; only the stored copy is fp16.
#include "quant/ggml/q4_0.h"

#include "quant/ggml/block_rows.h"
#include "quant/ggml/ggml_fp16.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qtrain {
namespace {

// The signed value of largest magnitude (the first one on ties) of a block of 32.
float signed_absmax(const float* x) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

BlockQ4_0 q4_0_block(const float* x) {
  BlockQ4_0 block;
  const float d = signed_absmax(x) / -8;
  const float id = d ? 1.0f / d : 0.0f;
  block.d = ggml_fp16_bits(d);
  for (int j = 0; j < kQK4_0 / 2; ++j) {
    const int q0 = std::min(15, static_cast<int>(x[j] * id + 8.5f));
    const int q1 = std::min(15, static_cast<int>(x[j + kQK4_0 / 2] * id + 8.5f));
    block.qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
  return block;
}

BlockQ5_0 q5_0_block(const float* x) {
  BlockQ5_0 block;
  const float d = signed_absmax(x) / -16;
  const float id = d ? 1.0f / d : 0.0f;
  block.d = ggml_fp16_bits(d);
  uint32_t qh = 0;
  for (int j = 0; j < kQK5_0 / 2; ++j) {
    const int q0 = std::min(31, static_cast<int>(x[j] * id + 16.5f));
    const int q1 = std::min(31, static_cast<int>(x[j + kQK5_0 / 2] * id + 16.5f));
    block.qs[j] = static_cast<uint8_t>((q0 & 0xF) | ((q1 & 0xF) << 4));
    qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + kQK5_0 / 2);
  }
  std::memcpy(block.qh, &qh, sizeof(qh));
  return block;
}

}  // namespace

void quantize_q4_0(const float* x, uint8_t* out, int64_t n) {
  quantize_blocks<kQK4_0>(x, out, n, q4_0_block);
}

void quantize_q5_0(const float* x, uint8_t* out, int64_t n) {
  quantize_blocks<kQK5_0>(x, out, n, q5_0_block);
}

}  // namespace qtrain

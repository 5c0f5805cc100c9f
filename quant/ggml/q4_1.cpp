// Bit-exact with ggml: compiled with -ffp-contract=off (quant/CMakeLists.txt). d is computed in
// float32 and used unrounded for the codes; only the stored copies of d and m are fp16.
#include "quant/ggml/q4_1.h"

#include "quant/ggml/block_rows.h"
#include "quant/ggml/ggml_fp16.h"

#include <algorithm>
#include <cfloat>
#include <cstring>

namespace qtrain {
namespace {

BlockQ4_1 q4_1_block(const float* x) {
  float min = FLT_MAX, max = -FLT_MAX;
  for (int j = 0; j < kQK4_1; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
  const float d = (max - min) / 15;
  const float id = d ? 1.0f / d : 0.0f;
  BlockQ4_1 block;
  block.d = ggml_fp16_bits(d);
  block.m = ggml_fp16_bits(min);
  for (int j = 0; j < kQK4_1 / 2; ++j) {
    // ggml truncates through int8_t: (x-min)*id + 0.5 lies in [0.5, 15.5], so this is a floor.
    const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>((x[j] - min) * id + 0.5f)));
    const int q1 =
        std::min(15, static_cast<int>(static_cast<int8_t>((x[j + kQK4_1 / 2] - min) * id + 0.5f)));
    block.qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
  return block;
}

}  // namespace

void quantize_q4_1(const float* x, uint8_t* out, int64_t n) {
  quantize_blocks<kQK4_1>(x, out, n, q4_1_block);
}

BlockQ4_1 q4_1_block_on_grid(float d, float m, const uint8_t* codes) {
  BlockQ4_1 block;
  block.d = ggml_fp16_bits(d);
  block.m = ggml_fp16_bits(m);
  for (int j = 0; j < kQK4_1 / 2; ++j) {
    block.qs[j] = static_cast<uint8_t>((codes[j] & 0xF) | ((codes[j + kQK4_1 / 2] & 0xF) << 4));
  }
  return block;
}

void dequantize_q4_1(const uint8_t* in, float* y, int64_t n) {
  for (int64_t i = 0; i < n / kQK4_1; ++i) {
    BlockQ4_1 block;
    std::memcpy(&block, in + i * sizeof(block), sizeof(block));
    const float d = ggml_fp16_value(block.d);
    const float m = ggml_fp16_value(block.m);
    float* out = y + i * kQK4_1;
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      out[j] = (block.qs[j] & 0x0F) * d + m;
      out[j + kQK4_1 / 2] = (block.qs[j] >> 4) * d + m;
    }
  }
}

}  // namespace qtrain

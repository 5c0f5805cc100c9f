// ggml's Q4_K super-block (reference/formats.md §7.5), bit-exact with ggml-quants.c's
// quantize_row_q4_K_ref (the one llama-quantize uses when no importance matrix is given).
//
//   Q4_K: 256 values -> 144 bytes: f16 d, f16 dmin, u8 scales[12] (8 6-bit scales + 8 6-bit mins),
//         u8 qs[128] (4-bit q); x^ = d*sc_j*q - dmin*m_j for sub-block j of 32.
//   scales: for j < 4, sc_j = scales[j] & 63 and m_j = scales[j+4] & 63; for j >= 4,
//           sc_j = (scales[j+4] & 0xF) | (scales[j-4] >> 6) << 4 and
//           m_j = (scales[j+4] >> 4) | (scales[j] >> 6) << 4.
//   qs: 4 chunks of 32 bytes; chunk c holds sub-block 2c in its low nibbles and 2c+1 in its high
//       nibbles.
#pragma once

#include "quant/ggml/kquant_common.h"

#include <cstdint>

namespace qtrain {

struct BlockQ4_K {
  uint16_t d;            // fp16 super-block scale of the 6-bit scales
  uint16_t dmin;         // fp16 super-block scale of the 6-bit mins
  uint8_t scales[12];    // 6-bit scales and mins, packed as above
  uint8_t qs[kQkK / 2];  // 4-bit quants, two per byte
};
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K blocks are 144 bytes");

// `x`: n floats (n a multiple of 256) -> n/256 BlockQ4_K written to `out` (unaligned is fine).
void quantize_q4_k(const float* x, uint8_t* out, int64_t n);

}  // namespace qtrain

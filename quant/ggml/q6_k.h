// ggml's Q6_K super-block (reference/formats.md §7.5), bit-exact with ggml-quants.c's
// quantize_row_q6_K_ref (the one llama-quantize uses when no importance matrix is given).
//
//   Q6_K: 256 values -> 210 bytes: u8 ql[128], u8 qh[64], i8 scales[16], f16 d;
//         x^ = d*scales[s]*(q-32) for sub-block s of 16, q a 6-bit value in 0..63.
//   Per half h of 128 values (ql + 64h, qh + 32h), for l < 32: ql[l] holds the low nibbles of
//   q[l] (low) and q[l+64] (high), ql[l+32] those of q[l+32] and q[l+96]; qh[l] holds the top 2
//   bits of q[l], q[l+32], q[l+64], q[l+96] at bits 0, 2, 4, 6.
#pragma once

#include "quant/ggml/kquant_common.h"

#include <cstdint>

namespace qtrain {

struct BlockQ6_K {
  uint8_t ql[kQkK / 2];      // low 4 bits of the quants
  uint8_t qh[kQkK / 4];      // high 2 bits of the quants
  int8_t scales[kQkK / 16];  // 8-bit sub-block scales
  uint16_t d;                // fp16 super-block scale
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K blocks are 210 bytes");

// `x`: n floats (n a multiple of 256) -> n/256 BlockQ6_K written to `out` (unaligned is fine).
void quantize_q6_k(const float* x, uint8_t* out, int64_t n);

}  // namespace qtrain

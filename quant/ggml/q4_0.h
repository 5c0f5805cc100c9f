// ggml's Q4_0 and Q5_0 blocks (reference/formats.md §7.5), bit-exact with ggml-quants.c's
// quantize_row_q4_0_ref / quantize_row_q5_0_ref. Both take d = max/-2^(bits-1), where max is the
// signed value of largest magnitude in the block (the first one on ties), so that value maps to
// q = 0 exactly.
//
//   Q4_0: 32 values -> 18 bytes: f16 d, u8 qs[16]; qs[j] = q[j] | q[j+16] << 4;
//         q = min(15, trunc(x/d + 8.5)); x^ = d*(q-8).
//   Q5_0: 32 values -> 22 bytes: f16 d, u8 qh[4] (little-endian u32: bit j = 5th bit of q[j]),
//         u8 qs[16] (low nibbles, as in Q4_0); q = min(31, trunc(x/d + 16.5)); x^ = d*(q-16).
#pragma once

#include <cstdint>

namespace qtrain {

constexpr int64_t kQK4_0 = 32;  // values per Q4_0 block
constexpr int64_t kQK5_0 = 32;  // values per Q5_0 block

struct BlockQ4_0 {
  uint16_t d;              // fp16 scale
  uint8_t qs[kQK4_0 / 2];  // 4-bit quants, two per byte
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 blocks are 18 bytes");

struct BlockQ5_0 {
  uint16_t d;              // fp16 scale
  uint8_t qh[4];           // 5th bits of the 32 quants
  uint8_t qs[kQK5_0 / 2];  // low 4 bits of the quants, two per byte
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 blocks are 22 bytes");

// `x`: n floats (n a multiple of 32) -> n/32 blocks written to `out` (unaligned is fine).
void quantize_q4_0(const float* x, uint8_t* out, int64_t n);
void quantize_q5_0(const float* x, uint8_t* out, int64_t n);

}  // namespace qtrain

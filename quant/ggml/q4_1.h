// ggml's Q4_1 block (reference/formats.md §7.5): 32 values, a float scale and a float offset, so
// every block is an affine grid w = d*q + m with q in 0..15.
//
//   Q4_1: 32 values -> 20 bytes: f16 d, f16 m, u8 qs[16]; qs[j] = q[j] | q[j+16] << 4 (values 0..15
//         in the low nibbles, 16..31 in the high ones, as Q4_0); x^ = d*q + m.
//
// quantize_q4_1 is bit-exact with ggml-quants.c's quantize_row_q4_1_ref (min/max of the block:
// d = (max-min)/15, m = min, q = min(15, trunc((x-min)/d + 0.5))). q4_1_block_on_grid stores
// given codes on a given grid instead: what an INT4 weight with a float per-group offset (a
// QA-LoRA merge) needs to be held exactly, up to the fp16 rounding of d and m.
#pragma once

#include <cstdint>

namespace qtrain {

constexpr int64_t kQK4_1 = 32;  // values per Q4_1 block

struct BlockQ4_1 {
  uint16_t d;              // fp16 scale
  uint16_t m;              // fp16 offset (the block's minimum for the reference quantizer)
  uint8_t qs[kQK4_1 / 2];  // 4-bit codes, two per byte
};
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 blocks are 20 bytes");

// `x`: n floats (n a multiple of 32) -> n/32 blocks written to `out` (unaligned is fine).
void quantize_q4_1(const float* x, uint8_t* out, int64_t n);

// The block with fp16(d), fp16(m) and `codes` (32 values, each 0..15; higher bits are dropped).
BlockQ4_1 q4_1_block_on_grid(float d, float m, const uint8_t* codes);

// n/32 blocks at `in` -> n floats d*q + m, computed in float32 as ggml's dequantize_row_q4_1.
void dequantize_q4_1(const uint8_t* in, float* y, int64_t n);

}  // namespace qtrain

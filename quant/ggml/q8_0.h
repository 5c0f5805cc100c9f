// ggml's Q8_0 block (reference/formats.md §7.5), bit-exact with ggml-quants.c's
// quantize_row_q8_0_ref.
//
//   Q8_0: 32 values -> 34 bytes: f16 d, i8 qs[32]; x^ = d*qs[j].
//         d = amax/127 (amax = the largest |x|), q = round(x/d) half away from zero.
#pragma once

#include <cstdint>

namespace qtrain {

constexpr int64_t kQK8_0 = 32;  // values per Q8_0 block

struct BlockQ8_0 {
  uint16_t d;         // fp16 scale
  int8_t qs[kQK8_0];  // signed quants
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 blocks are 34 bytes");

// `x`: n floats (n a multiple of 32) -> n/32 BlockQ8_0 written to `out` (unaligned is fine).
void quantize_q8_0(const float* x, uint8_t* out, int64_t n);

}  // namespace qtrain

// ggml's K-quant super-block encoders (reference/formats.md §7.5), bit-exact with
// ggml-quants.c's reference quantizers quantize_row_q4_K_ref / quantize_row_q6_K_ref (the ones
// llama-quantize uses when no importance matrix is given).
//
//   Q4_K: 256 values -> 144 bytes: f16 d, f16 dmin, u8 scales[12] (8 6-bit scales + 8 6-bit mins),
//         u8 qs[128] (4-bit q); x^ = d*sc_j*q - dmin*m_j for sub-block j of 32.
//   Q6_K: 256 values -> 210 bytes: u8 ql[128], u8 qh[64], i8 scales[16], f16 d;
//         x^ = d*scales[s]*(q-32) for sub-block s of 16.
#pragma once

#include <cstdint>

namespace qtrain {

constexpr int64_t kQkK = 256;  // values per K-quant super-block

// `x`: n floats (n a multiple of 256) -> n/256 blocks written to `out`.
void quantize_q4_k(const float* x, uint8_t* out, int64_t n);
void quantize_q6_k(const float* x, uint8_t* out, int64_t n);

// ggml's nearest_int: round half to even through the 1.5*2^23 trick (valid for |v| < 2^22).
int ggml_nearest_int(float v);
// IEEE binary16 bits of `v`, round to nearest even (ggml's GGML_FP32_TO_FP16) and back.
uint16_t ggml_fp16_bits(float v);
float ggml_fp16_value(uint16_t bits);

}  // namespace qtrain

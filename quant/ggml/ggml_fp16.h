// ggml's scalar helpers shared by its block quantizers: nearest_int and the fp16 conversions
// (GGML_FP32_TO_FP16 / GGML_FP16_TO_FP32), bit-exact with ggml-quants.c / ggml-impl.h.
#pragma once

#include <cstdint>

namespace qtrain {

// ggml's nearest_int: round half to even through the 1.5*2^23 trick (valid for |v| < 2^22).
int ggml_nearest_int(float v);
// IEEE binary16 bits of `v`, round to nearest even (ggml's GGML_FP32_TO_FP16) and back.
uint16_t ggml_fp16_bits(float v);
float ggml_fp16_value(uint16_t bits);

}  // namespace qtrain

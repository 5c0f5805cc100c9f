// The vectorized kernels behind cpu::quantize_4bit and cpu::quantize_int8 (quant/blockwise_cpu.cpp
// holds the scalar reference and chooses between them at run time, by the same path as the 4-bit
// dequantize). Compiled per instruction set with function target attributes, like
// quant/dequantize_4bit_simd.h; call one only when its cpu_has_*() is true.
//
// Every kernel writes the bits of the scalar loop: absmax = the largest |x| of the block with NaN
// skipped (-FLT_MAX for an all-NaN block), xn = x * (1.0f / absmax) in float32, NF4 and FP4 codes
// found by the same threshold comparisons (so NaN codes 0 and FP4's tiny negatives keep their sign
// bit), INT8 q = round-half-away(x * (127.0f / absmax)) with NaN -> 0.
//
// Full blocks only: every block in [block_begin, block_end) holds `blocksize` elements, and
// blocksize is a multiple of kSimdQuantizeMultiple. The caller sends any other block (the last
// partial one, an odd blocksize) to the scalar loop.
#pragma once

#include "quant/dequantize_4bit_simd.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace qtrain::cpu::simd {

constexpr int64_t kSimdQuantizeMultiple = 32;

enum class Code4bit { kNF4, kFP4 };

// in: element 0 of the whole input. packed [n/2]: element 2k in the high nibble of byte k.
// absmax [nblocks].
template <typename T>
struct Quantize4bitArgs {
  const T* in;
  int64_t blocksize;
  Code4bit code;
  uint8_t* packed;
  float* absmax;
};

// in: element 0 of the whole input; q [n]; absmax [nblocks].
template <typename T>
struct QuantizeInt8Args {
  const T* in;
  int64_t blocksize;
  int8_t* q;
  float* absmax;
};

// Each is defined for T = float, c10::BFloat16 and c10::Half.
template <typename T>
void quantize_4bit_avx512(const Quantize4bitArgs<T>& a, int64_t block_begin, int64_t block_end);
template <typename T>
void quantize_int8_avx512(const QuantizeInt8Args<T>& a, int64_t block_begin, int64_t block_end);
template <typename T>
void quantize_4bit_avx2(const Quantize4bitArgs<T>& a, int64_t block_begin, int64_t block_end);
template <typename T>
void quantize_int8_avx2(const QuantizeInt8Args<T>& a, int64_t block_begin, int64_t block_end);

}  // namespace qtrain::cpu::simd

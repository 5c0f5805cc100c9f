// The vectorized kernels behind cpu::dequantize_4bit (quant/blockwise_cpu.cpp holds the scalar
// reference and chooses between them at run time). Each is compiled for its instruction set with
// a function target attribute, so the build needs no -march flag; call one only when its
// cpu_has_*() is true.
//
// Every kernel writes the bits the scalar loop writes: for each element i of blocks
// [block_begin, block_end), out[i] = code[q_i] * absmax[i / blocksize] multiplied in float32 and
// rounded once to the output type (c10::BFloat16's round-to-nearest-even with NaN -> 0x7FC0;
// c10::Half's IEEE conversion with NaN -> sign | 0x7E00). Reads only the packed bytes of those
// elements and writes only those elements, so pointers may be unaligned and n need not be a
// multiple of the blocksize or even.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace qtrain::cpu::simd {

struct Dequantize4bitArgs {
  const uint8_t* packed;  // [(n+1)/2]: element 2k in the high nibble of byte k, 2k+1 in the low
  const float* absmax;    // [ceil(n / blocksize)]
  const float* code;      // [16], the quant_map
  int64_t n;              // elements
  int64_t blocksize;      // even and > 0
};

bool cpu_has_avx512();  // AVX-512 F and BW, with the OS saving their registers
bool cpu_has_avx2();    // AVX2 and F16C

// `out` points at element 0 of the whole [n] output.
void dequantize_4bit_avx512(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                            float* out);
void dequantize_4bit_avx512(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                            c10::BFloat16* out);
void dequantize_4bit_avx512(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                            c10::Half* out);

void dequantize_4bit_avx2(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                          float* out);
void dequantize_4bit_avx2(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                          c10::BFloat16* out);
void dequantize_4bit_avx2(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                          c10::Half* out);

}  // namespace qtrain::cpu::simd

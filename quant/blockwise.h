// Blockwise quantization kernels in bitsandbytes' exact formats. Every function dispatches on the
// device of its input: a CPU reference (quant/blockwise_cpu.cpp) or CUDA (quant/cuda/*.cu).
// Both produce identical codes and absmax; dequantized values agree within rounding.
//
// Inputs are flattened row-major; block b covers elements [b*blocksize, (b+1)*blocksize) and the
// last block may be partial. absmax is float32 [ceil(n / blocksize)].
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

namespace qtrain {

enum class QuantType { kNF4, kFP4, kInt8 };

// x: any float dtype, any shape (n elements) -> (packed uint8 [(n+1)/2], absmax float32
// [nblocks]). Element 2k goes to the HIGH nibble of byte k. x is normalised as x * (1/absmax)
// in float32, then NF4 rounds to the nearest code with ties to the lower one (CUDA's decision
// tree); FP4 sets the sign bit for x < 0 and picks the magnitude by bitsandbytes' thresholds.
// An all-zero block has absmax 0 and, as on bitsandbytes' CUDA path (0 * (1/0) = NaN passes no
// threshold), code 0 for every element (bytes 0x00); it dequantizes to zeros.
std::pair<at::Tensor, at::Tensor> quantize_4bit(const at::Tensor& x, QuantType type,
                                                int64_t blocksize);

// packed uint8 [(n+1)/2], absmax float32 [nblocks], code float32 [16] (the quant_map)
// -> [n] in out_dtype: code[q] * absmax[block] computed in float32, then cast.
at::Tensor dequantize_4bit(const at::Tensor& packed, const at::Tensor& absmax,
                           const at::Tensor& code, int64_t n, int64_t blocksize,
                           at::ScalarType out_dtype);

// 8-bit blockwise with a 256-entry code table (the dynamic map), as bitsandbytes'
// quantize_blockwise: x float32 [n] -> (codes uint8 [n], absmax float32 [nblocks]); nearest code
// value of x * (1/absmax), ties to the lower one (code must be sorted ascending).
std::pair<at::Tensor, at::Tensor> quantize_blockwise_8bit(const at::Tensor& x,
                                                          const at::Tensor& code,
                                                          int64_t blocksize);
at::Tensor dequantize_blockwise_8bit(const at::Tensor& codes, const at::Tensor& absmax,
                                     const at::Tensor& code, int64_t blocksize,
                                     at::ScalarType out_dtype);

// Linear blockwise INT8 (the 8-bit LoRA base): q = round_half_away(x * (127 / absmax)) as int8
// [n], absmax float32 [nblocks], all float32 (an all-zero block gives q = 0); dequantize:
// q * (absmax / 127).
std::pair<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& x, int64_t blocksize);
at::Tensor dequantize_int8(const at::Tensor& q, const at::Tensor& absmax, int64_t blocksize,
                           at::ScalarType out_dtype);

}  // namespace qtrain

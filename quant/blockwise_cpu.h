// The CPU reference of the blockwise kernels (quant/blockwise.h has the formats and shapes).
// Called by the device dispatch in quant/blockwise.cpp once the arguments are checked: inputs are
// CPU tensors, blocksize > 0 (and even for 4-bit), absmax and code have the documented sizes.
#pragma once

#include "quant/blockwise.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

namespace qtrain::cpu {

std::pair<at::Tensor, at::Tensor> quantize_4bit(const at::Tensor& x, QuantType type,
                                                int64_t blocksize);
at::Tensor dequantize_4bit(const at::Tensor& packed, const at::Tensor& absmax,
                           const at::Tensor& code, int64_t n, int64_t blocksize,
                           at::ScalarType out_dtype);
// The same into `out`: a contiguous CPU tensor of n elements of a floating type (the benchmarks
// use it to time the kernel apart from the allocation of a fresh output).
void dequantize_4bit_into(const at::Tensor& packed, const at::Tensor& absmax,
                          const at::Tensor& code, int64_t n, int64_t blocksize, at::Tensor& out);

// The implementation the 4-bit quantize and dequantize and the INT8 quantize run for float32,
// bfloat16 and float16 data (float64 always takes the scalar one): the scalar reference or a
// vectorized kernel (quant/dequantize_4bit_simd.h, quant/quantize_simd.h), all bit-identical.
// kAuto, the default, takes the widest the CPU has; tests and benchmarks force one. Process-wide;
// not meant to change while a call runs.
enum class SimdPath { kAuto, kScalar, kAvx2, kAvx512 };
bool simd_path_supported(SimdPath path);  // kAuto and kScalar always
// Throws Error(kUnsupported) for a path this CPU (or build) lacks.
void set_simd_path(SimdPath path);
SimdPath simd_path();                       // the path in use, never kAuto
const char* simd_path_name(SimdPath path);  // "scalar", "avx2", ...

std::pair<at::Tensor, at::Tensor> quantize_blockwise_8bit(const at::Tensor& x,
                                                          const at::Tensor& code,
                                                          int64_t blocksize);
at::Tensor dequantize_blockwise_8bit(const at::Tensor& codes, const at::Tensor& absmax,
                                     const at::Tensor& code, int64_t blocksize,
                                     at::ScalarType out_dtype);

std::pair<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& x, int64_t blocksize);
at::Tensor dequantize_int8(const at::Tensor& q, const at::Tensor& absmax, int64_t blocksize,
                           at::ScalarType out_dtype);

}  // namespace qtrain::cpu

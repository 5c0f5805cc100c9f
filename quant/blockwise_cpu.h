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

// The code tables of bitsandbytes' 4-bit and 8-bit blockwise formats (reference/formats.md §1.1,
// §1.3): NF4, FP4 and the signed / unsigned 8-bit dynamic maps. All float32 CPU tensors.
#pragma once

#include <ATen/core/Tensor.h>

namespace qtrain {

at::Tensor nf4_code();               // [16], sorted, code index = nibble value
at::Tensor fp4_code();               // [16] in code order (bit 3 = sign), values / 12, not sorted
at::Tensor dynamic_code_signed();    // [256] create_dynamic_map(signed=True): nested absmax, Adam m
at::Tensor dynamic_code_unsigned();  // [256] create_dynamic_map(signed=False): Adam v

}  // namespace qtrain

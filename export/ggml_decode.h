// ggml tensor data back to float32: the inverse of formats/gguf's encoders, computed as
// ggml-quants.c's dequantize_row_* (and gguf-py's dequantize) compute it, so a GGUF export can
// be evaluated with the weights llama.cpp reads (qexport --check). The block layouts are
// quant/ggml's headers and reference/formats.md §7.5.
#pragma once

#include "formats/gguf/gguf_types.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qtrain {

// `data`: the bytes of `rows` rows of `ne0` values of `type` (rows * ne0 / block_elems blocks,
// ggml_nbytes of them) -> float32 [rows, ne0] on the CPU.
//   F32, F16, BF16: the values.
//   Q8_0: d*q.  Q4_0: d*(q-8).  Q5_0: d*(q-16).  Q4_1: d*q + m.  Q5_1: d*q + m.
//   Q4_K: (d*sc)*q - dmin*m per sub-block of 32.  Q6_K: (d*sc)*(q-32) per sub-block of 16.
// d, dmin and m are fp16 in the block; every product and sum is a float32 operation in ggml's
// order. Throws Error(kShape) when ne0 is not a multiple of the block, Error(kUnsupported) for a
// type without a decoder here (Q8_1, Q2_K, Q3_K, Q5_K, Q8_K).
at::Tensor ggml_decode_rows(GgmlType type, const uint8_t* data, int64_t rows, int64_t ne0);

}  // namespace qtrain

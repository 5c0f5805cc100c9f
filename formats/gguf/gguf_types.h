// ggml tensor types as GGUF stores them (reference/formats.md §7.5): ids, block geometry and the
// encoders that turn float rows into a type's bytes.
//
// Every type is a sequence of blocks along ne[0] (the innermost dimension): F32/F16 are blocks of
// one element; quantized types (Q8_0, Q4_0, Q4_K, Q6_K, ...) are blocks of 32 or 256 elements.
// Adding a quantized type = its id here, a row in the traits table, a block encoder in
// quant/ggml/ (one header+source per format) and its case in gguf_types.cpp's quantizer_of.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

struct GgmlTypeTraits {
  GgmlType type;
  const char* name;     // "F32", "Q4_K", ...
  int64_t block_elems;  // elements per block (along ne[0])
  int64_t block_bytes;  // bytes per block
  bool quantized;       // files holding one need general.quantization_version
  bool can_encode;      // qtrain has an encoder for it
};

// Throws Error(kUnsupported) for a type id qtrain does not know.
const GgmlTypeTraits& ggml_type_traits(GgmlType type);
std::string ggml_type_name(GgmlType type);

// Bytes of a tensor with GGUF dims `ne` (ne[0] innermost). Throws Error(kShape) when ne[0] is not
// a multiple of the type's block size.
uint64_t ggml_nbytes(GgmlType type, const std::vector<int64_t>& ne);

// Encodes `rows` [n, ne0] (any floating dtype, CPU) into n * ne0/block_elems blocks of `type`,
// written to `out` (which must hold that many bytes). Values are converted to float32 first, then
// to the type: F16 rounds to nearest even, like numpy's astype(float16); Q8_0, Q4_0, Q4_1, Q5_0,
// Q4_K and Q6_K give the bytes of ggml-quants.c's quantize_row_*_ref. Throws Error(kUnsupported)
// for a non-floating input or a type without an encoder.
void ggml_encode_rows(GgmlType type, const at::Tensor& rows, uint8_t* out);

}  // namespace qtrain

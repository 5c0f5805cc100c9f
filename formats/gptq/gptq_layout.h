// GPTQ's INT4 checkpoint layout, AutoGPTQ "gptq" v1 (reference/formats.md §8), as transformers
// (optimum), AutoGPTQ, GPTQModel and vLLM read it. For a projection `<module>` with weight
// [out, in] and groups of `g` inputs:
//   <module>.qweight  int32 [in/8, out]       qweight[r, n] bits 4j..4j+3 = code of input 8r+j
//   <module>.qzeros   int32 [in/g, out/8]     qzeros[G, c] bits 4j..4j+3 = zero(G, 8c+j) - 1
//   <module>.scales   fp16  [in/g, out]
//   <module>.g_idx    int32 [in]              group of each input (i / g: desc_act false)
// and w = scale * (code - zero) with integer zeros 1..16 (v1 stores zero - 1 in a nibble).
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include <array>
#include <cstdint>

namespace qtrain {

// The tensor-name suffixes of one projection, in the order they are written.
inline constexpr std::array<const char*, 4> kGptqSuffixes = {".qweight", ".qzeros", ".scales",
                                                             ".g_idx"};

struct GptqProjection {
  at::Tensor qweight;  // int32 [in/8, out]
  at::Tensor qzeros;   // int32 [groups, out/8]
  at::Tensor scales;   // fp16 [groups, out]
  at::Tensor g_idx;    // int32 [in]
};

// codes uint8 [out, in] (0..15), zeros integer-valued [out, in/g] in 1..16, scales [out, in/g]
// -> the four tensors above. `in` must be a multiple of g and of 8, `out` a multiple of 8.
GptqProjection pack_gptq_projection(const at::Tensor& codes, const at::Tensor& zeros,
                                    const at::Tensor& scales, int64_t group_size);

// The inverse for readers: the four tensors -> float32 [out, in], w = scale * (code - zero) per
// group in float32 (zero = stored nibble + 1, group = g_idx[i]), as GPTQ v1 readers dequantize.
at::Tensor dequantize_gptq_projection(const GptqProjection& p);

// Unpacks int32 [...] into 4-bit values [..., 8] (value j = bits 4j..4j+3).
at::Tensor unpack_nibbles_int32(const at::Tensor& packed);

// Packs 4-bit values (0..15) along the last dim of `nibbles` [..., 8] into int32 [...]: value j
// goes to bits 4j..4j+3 (the int32 read as uint32 bits, as GPTQ readers do).
at::Tensor pack_nibbles_int32(const at::Tensor& nibbles);

// The quantization_config (and quantize_config.json) of a 4-bit asymmetric GPTQ v1 checkpoint
// with groups of `group_size` and no activation order.
nlohmann::json gptq_quantize_config(int64_t group_size);

}  // namespace qtrain

// Which ggml type each tensor of a GGUF export gets: the output types qtrain writes and, for the
// quantized ones, llama.cpp's choice per tensor (llama-quant.cpp's llama_tensor_get_type without
// an importance matrix, for the dense llama / qwen2 / qwen3 architectures), so that our files have
// the tensor types `llama-quantize model-f16.gguf out.gguf <type>` gives.
#pragma once

#include "formats/gguf/gguf_types.h"

#include <cstdint>
#include <string>

namespace qtrain {

enum class GgufOutType { kF32, kF16, kQ8_0, kQ4_0, kQ4_1, kQ4_K_M };

// "f32", "f16", "q8_0", "q4_0", "q4_1", "q4_k_m" (llama-quantize's spelling, any case) -> the
// type. Throws Error(kConfig) naming the accepted values.
GgufOutType parse_gguf_outtype(const std::string& name);
std::string gguf_outtype_name(GgufOutType type);  // "F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K_M"

// general.file_type (llama_ftype): ALL_F32 0, MOSTLY_F16 1, Q8_0 7, Q4_0 2, Q4_1 3, Q4_K_M 15.
uint32_t gguf_file_type(GgufOutType type);

// One tensor of the file, as the type choice sees it.
struct GgufMixTensor {
  std::string name;    // GGUF name: "blk.3.attn_v.weight", "output.weight", ...
  int64_t n_dims = 2;  // 1-D tensors are never quantized (F32)
  int64_t ne0 = 0;     // innermost dimension (HF in_features; the hidden size for token_embd)
  int64_t layer = -1;  // blk.N's N, -1 for the others
  int64_t n_layers = 0;
  bool tied = false;  // the file has no output.weight: token_embd doubles as the output
};

// The type for `t` in a file of `outtype`:
//   F32 / F16: every matrix in that type.
//   Q8_0 / Q4_0 / Q4_1 / Q4_K_M: the base type Q8_0 / Q4_0 / Q4_1 / Q4_K, except
//     output.weight (token_embd when tied): Q6_K unless the base is Q8_0; Q8_0 when ne0 is not a
//       multiple of the base type's block;
//     Q4_K_M: attn_v and ffn_down of layer i are Q6_K where use_more_bits(i, n):
//       i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2;
//   then a type whose block does not divide ne0 falls back: Q4_K -> Q5_0, Q6_K -> Q8_0, and a
//   block-32 type that still does not fit -> F16.
GgmlType gguf_tensor_type(GgufOutType outtype, const GgufMixTensor& t);

}  // namespace qtrain

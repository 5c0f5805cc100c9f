// HF checkpoint directory -> GGUF v3 file for llama.cpp (reference/formats.md §7), the way
// convert_hf_to_gguf.py lays it out: llama/mistral as arch "llama" (Q/K rows permuted to the
// interleaved RoPE pairing); qwen2, qwen3, gemma2, gemma3_text (as "gemma3") and phi3 as
// themselves, without the permutation (Gemma's norm weights stored as float32 1 + w; phi3's fused
// qkv_proj and gate_up_proj kept fused as attn_qkv and ffn_up).
#pragma once

#include "formats/gguf/gguf_mix.h"
#include "formats/gguf/gguf_writer.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

// A tensor whose type the caller chooses rather than the file type's mix (gguf_mix.h).
struct GgufTensorChoice {
  GgmlType type = GgmlType::kF16;
  // Empty: the checkpoint's values are encoded as `type`. Else it returns the tensor already
  // encoded: uint8 [rows, row bytes of `type`], rows in the checkpoint's (HF) order; export_gguf
  // applies the llama Q/K row permutation to the rows itself.
  std::function<at::Tensor()> encoded;
};

struct GgufExportOptions {
  // Type of the 2-D weights (per tensor for the quantized mixes: models/gguf_mix.h); 1-D tensors
  // (norms, biases, rope_freqs) are always F32.
  GgufOutType outtype = GgufOutType::kF16;
  // general.name; empty = the checkpoint directory's name.
  std::string name;
  // Write no tokenizer.* metadata (for checkpoints whose tokenizer qtrain cannot convert yet).
  // llama.cpp cannot run such a file without a vocabulary from elsewhere.
  bool skip_tokenizer = false;
  // Per HF tensor (name, torch shape): a choice that replaces the mix's, or nullopt to keep it.
  std::function<std::optional<GgufTensorChoice>(const std::string& hf_name,
                                                const std::vector<int64_t>& shape)>
      choose;
};

// Converts the HF checkpoint in `hf_dir` (config.json, safetensors, tokenizer.model or a byte-level
// BPE tokenizer.json) into a GGUF file at `out_path`, streaming one tensor at a time (quantized
// from the checkpoint's values, like convert_hf_to_gguf --outtype q8_0); written atomically.
// Throws Error: kConfig / kUnsupported for the config, kShape for missing or unexpected tensors,
// kUnsupported for a tokenizer it cannot convert (unless skip_tokenizer), kIo for I/O.
void export_gguf(const std::string& hf_dir, const std::string& out_path,
                 const GgufExportOptions& options = {});

// GGUF architecture name for an HF model_type: llama|mistral -> "llama", gemma3_text ->
// "gemma3", and qwen2, qwen3, gemma2, phi3 as themselves. Error(kUnsupported) for the others.
std::string gguf_architecture(const std::string& model_type);

// The llama Q/K row permutation (formats.md §7.4) for `w` [n_heads * head_dim, ...] (a weight
// [rows, cols] or a bias [rows]): within each head, new row 2j+t = old row t*head_dim/2 + j
// (t in {0,1}, j < head_dim/2). It turns HF's rotate-half pairing (j, j+d/2) into ggml's
// interleaved pairing (2j, 2j+1). Returns a new contiguous tensor.
at::Tensor permute_qk_for_gguf(const at::Tensor& w, int64_t n_heads);
// The inverse: GGUF llama layout back to HF layout.
at::Tensor unpermute_qk_from_gguf(const at::Tensor& w, int64_t n_heads);

}  // namespace qtrain

// An export read back the way its users read it, as a model qtrain can evaluate (qexport
// --check compares it with the trained model on the run's held-out split):
//
//   merged-bf16/-fp16  the HF directory, its stored values
//   nf4                the bitsandbytes 4-bit directory at its stored precision (4-bit slots)
//   gguf               every tensor decoded to float32 as llama.cpp's dequantize gives it
//                      (export/ggml_decode.h), GGUF names mapped back to HF ones (gemma2/3's
//                      norms, phi3's fused attn_qkv and ffn_up included), the llama Q/K row
//                      permutation undone and Gemma's stored 1 + w norms turned back into w, in
//                      a dense model of the base's config.json
//                      (llama.cpp multiplies the quantized blocks directly, with activations
//                      rounded to 8 bits: its logits differ from these by that rounding alone)
//   gptq-int4          w = scale * (code - zero) per group in float32, as GPTQ v1 readers
//                      dequantize qweight / qzeros / scales / g_idx, in a dense model of the
//                      export's config.json
#pragma once

#include "export/export_formats.h"
#include "models/config.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <memory>
#include <string>

namespace qtrain {

class CausalLM;

// Loads `path` (a file for gguf, else a directory) written in `format`, computing in `dtype` on
// `device`. `base_model_dir` gives the config of a GGUF file. Throws Error(kUsage) for the
// adapter format (nothing to load on its own), and the readers' errors: Error(kShape) naming a
// tensor the model lacks, one it does not have, or a shape that differs.
std::shared_ptr<CausalLM> load_export(const std::string& path, ExportFormat format,
                                      const std::string& base_model_dir, at::ScalarType dtype,
                                      c10::Device device);

// How load_export reads `format`, for reports: "the GGUF tensors decoded to float32", ...
std::string export_readback_description(ExportFormat format);

// The tensors of a GGUF file by HF name, float32 in the HF layout: the inverse of export_gguf
// for `config` (Q/K rows un-permuted for the llama architecture; for gemma2/3, 1 is subtracted
// from every norm weight, which export_gguf stores as float32(1 + w)); rope_freqs is left out
// (the config carries the rope). Error(kShape) naming a tensor with no HF counterpart.
std::map<std::string, at::Tensor> gguf_hf_tensors(const std::string& path,
                                                  const ModelConfig& config);

// The tensors of a GPTQ v1 directory by HF name: each projection's weight [out, in] dequantized
// in float32, every other tensor converted to float32.
std::map<std::string, at::Tensor> gptq_dequantized_tensors(const std::string& dir);

// A dense CausalLM of `config` whose parameters are `tensors` (HF names; lm_head.weight absent
// when tied). Error(kShape) naming `source` and every missing or unexpected tensor, or a tensor
// whose shape differs.
std::shared_ptr<CausalLM> causal_lm_from_tensors(const ModelConfig& config,
                                                 const std::map<std::string, at::Tensor>& tensors,
                                                 at::ScalarType dtype, c10::Device device,
                                                 const std::string& source);

}  // namespace qtrain

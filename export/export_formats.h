// qexport's formats, each written so the output appears complete or not at all (staged beside the
// target, then renamed; a failed export leaves nothing and an existing output is replaced only
// with --overwrite, once the new one is complete).
//
//   adapter      the PEFT adapter directory (adapter_config.json + adapter_model.safetensors)
//   merged-bf16  base + adapter merged, HF safetensors in bfloat16 (sharded)
//   merged-fp16  the same in float16
//   nf4          merged, then quantized to bitsandbytes NF4 (double quant, blocks of 64) with a
//                quantization_config that transformers + bitsandbytes load
//   gguf         merged, then GGUF v3 for llama.cpp: f32 | f16 | q8_0 | q4_0 | q4_1 | q4_k_m (a
//   file);
//                q4_1 of a QA-LoRA run holds its merge exactly (qalora_q4_1.h), other matrices F16
//   gptq-int4    a QA-LoRA run as GPTQ INT4 (gptq_export.h)
#pragma once

#include "export/export_source.h"
#include "export/merged_weights.h"

#include <cstdint>
#include <string>

namespace qtrain {

enum class ExportFormat { kAdapter, kMergedBf16, kMergedFp16, kNf4, kGguf, kGptqInt4 };
ExportFormat export_format_from_name(const std::string& name);  // Error(kUsage) listing them
std::string export_format_name(ExportFormat format);

struct ExportOptions {
  ExportFormat format = ExportFormat::kMergedBf16;
  BaseWeights base_weights = BaseWeights::kOriginal;
  std::string gguf_type = "f16";  // f32 | f16 | q8_0 | q4_0 | q4_1 | q4_k_m
  uint64_t max_shard_bytes = 5'000'000'000ULL;
  bool overwrite = false;
};

struct ExportReport {
  std::string output;
  std::string base_description;  // which base weights were merged ("" for adapter)
  int64_t merged_modules = 0;
  std::string details;  // format-specific figures (GPTQ zero rounding), may be empty
};

// Throws Error(kIo) when `out` exists and overwrite is off (before any work), Error(kUsage) for a
// bad gguf_type, and whatever the format's writer throws; on any error `out` is as it was.
ExportReport run_export(const ExportSource& source, const std::string& out,
                        const ExportOptions& options);

}  // namespace qtrain

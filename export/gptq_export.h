// A QA-LoRA run as a GPTQ INT4 checkpoint (AutoGPTQ "gptq" v1 layout, reference/formats.md §8) that
// transformers (optimum), AutoGPTQ, GPTQModel and vLLM load: per projection qweight int32
// [in/8, out], qzeros int32 [groups, out/8] (zero - 1 per nibble), scales fp16 [groups, out],
// g_idx int32 [in]; every other tensor in fp16; config.json with quantization_config
// (quant_method gptq, bits 4, sym false, desc_act false) and quantize_config.json.
//
// The codes and scales are those the run trained on (GPTQ's RTN quantizer over the original
// weights). The QA-LoRA merge moves each zero point to z' = z - D / s, a fraction in general;
// the GPTQ layout holds integer zeros only, so z' is rounded to the nearest integer (and kept in
// the 1..16 range v1 can store). That rounding is the one loss of this export: per weight at most
// s / 2, constant over a group. GptqExportReport says how large it was.
#pragma once

#include "export/merged_weights.h"

#include <cstdint>
#include <string>

namespace qtrain {

struct GptqExportReport {
  int64_t projections = 0;
  int64_t groups = 0;             // (group, output) zero points written
  int64_t clamped_zeros = 0;      // zero points outside 1..16 before clamping
  double max_zero_rounding = 0;   // max |z' - round(z')| (0 when no adapter moved the zeros)
  double mean_zero_rounding = 0;  // mean |z' - round(z')|
};

// `dir` must exist and be empty. Throws Error(kConfig) when the weights are not a QA-LoRA merge
// (a plain LoRA adapter would need re-quantizing: use nf4 or gguf) or when a decoder projection
// was kept dense in training (GPTQ checkpoints quantize every one).
GptqExportReport write_gptq_int4(const MergedWeights& weights, const std::string& dir,
                                 uint64_t max_shard_bytes);

}  // namespace qtrain

// A QA-LoRA run as a GPTQ INT4 checkpoint (AutoGPTQ "gptq" v1 layout, reference/formats.md §8) that
// transformers (optimum), AutoGPTQ, GPTQModel and vLLM load: per projection qweight int32
// [in/8, out], qzeros int32 [groups, out/8] (zero - 1 per nibble), scales fp16 [groups, out],
// g_idx int32 [in]; every other tensor in fp16; config.json with quantization_config
// (quant_method gptq, bits 4, sym false, desc_act false) and quantize_config.json.
//
// The QA-LoRA merge (qalora_int4.h) needs a fractional zero point z - D/s that GPTQ's integer
// zeros cannot hold; gptq_fit.h chooses per (row, group) the fp16 scale, integer zero and codes
// that keep the group's mean (where the update lives) and otherwise stay closest to the exact
// merged weights (never a scale below the smallest normal fp16). That choice is the one loss of
// this export; GptqExportReport says how large it was, next to what rounding the zeros alone
// would have lost.
#pragma once

#include "export/gptq_fit.h"
#include "export/merged_weights.h"

#include <cstdint>
#include <string>

namespace qtrain {

struct GptqExportReport {
  int64_t projections = 0;
  GptqFitStats fit;  // groups, refit and floored groups, errors against the exact merge

  // Root mean squares: of the update training learned (D, over groups); of the error of each
  // group's mean against the trained model's (over groups) and of each weight (over weights), for
  // the fit written and for rounding the zeros alone (not written).
  double rms_update() const;
  double rms_mean_error_fitted() const;
  double rms_mean_error_rounded() const;
  double rms_error_fitted() const;
  double rms_error_rounded() const;
  // One paragraph with these figures and the counts, for qexport's report.
  std::string summary() const;
};

// `dir` must exist and be empty. Throws Error(kConfig) when the weights are not a QA-LoRA merge
// (a plain LoRA adapter would need re-quantizing: use nf4 or gguf) or when a decoder projection
// was kept dense in training (GPTQ checkpoints quantize every one).
GptqExportReport write_gptq_int4(const MergedWeights& weights, const std::string& dir,
                                 uint64_t max_shard_bytes);

}  // namespace qtrain

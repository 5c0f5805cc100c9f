// A QA-LoRA projection as GGUF Q4_1 blocks, exactly: Q4_1 stores w = d*q + m per 32 values with a
// float offset m, and the merged QA-LoRA weight s*(q - z) + D is that grid with d = s and
// m = D - s*z, the training codes unchanged. A group of g = 32, 64 or 128 inputs covers g/32
// whole blocks with the same (d, m). Only the fp16 rounding of d and m is lost.
#pragma once

#include "export/qalora_int4.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qtrain {

struct Q4_1MergeStats {
  int64_t blocks = 0;
  double max_error = 0;           // max |dequantized - merged| over the blocks written
  double max_error_in_steps = 0;  // the largest |error| / s of a block (fp16 rounding: ~1e-3)
};

// uint8 [out, in/32 * 20]: the blocks of `w` row by row. d = fp16(s); m = fp16 of the mean of
// merged - fp16(s)*q over the block (the least-squares offset for that d), codes = training's.
// Throws Error(kConfig) when the group size is not a multiple of 32.
at::Tensor encode_qalora_q4_1(const QaLoraInt4Weight& w, Q4_1MergeStats* stats = nullptr);

}  // namespace qtrain

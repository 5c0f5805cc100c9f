// The projections of a QA-LoRA run as the trained model computes them: the INT4 base training saw
// (GPTQ's RTN codes, scales and zeros of the original weight) plus the adapter's update, which is
// one constant per (output row, group) because lora_A sees group means:
//
//   merged[n, i] = s[n, G] * (q[n, i] - z[n, G]) + D[n, G],   D = scaling * (B A)[n, G] / g.
//
// Every INT4 export of such a run (GPTQ, GGUF Q4_1) starts here and differs from `merged()` only
// by what its own format cannot hold.
#pragma once

#include "quant/int4_group.h"

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace qtrain {

class MergedWeights;

struct QaLoraInt4Weight {
  Int4GroupTensor base;  // codes, scales, zeros of training (float32 scales and zeros)
  at::Tensor delta;      // float32 [out, groups]: D (zeros for a projection without an adapter)
  at::Tensor original;   // float32 [out, in]: the weight the INT4 base was quantized from

  // float32 [out, in]: s * (q - z) + D, in the order the trained model computes it.
  at::Tensor merged() const;
  // float32 [out, in]: original + D (what a merge into the full-precision base gives).
  at::Tensor merged_original() const;
};

// The decoder projections a QA-LoRA run trained on INT4: 2-D `.layers.` *_proj weights that
// is_quantized_projection keeps (`skip_modules`: the run's quantization.skip_modules).
std::vector<std::string> qalora_int4_projections(const MergedWeights& weights,
                                                 const std::vector<std::string>& skip_modules);

// `name` (an HF weight name) of a MergedWeights opened with BaseWeights::kOriginal on a QA-LoRA
// run. Throws Error(kInternal) when the weights are not a QA-LoRA merge.
QaLoraInt4Weight qalora_int4_weight(const MergedWeights& weights, const std::string& name);

}  // namespace qtrain

// GPTQ v1 parameters for the QA-LoRA merge, fitted per (row, group) to the exact merged weights.
//
// The merged weight s*(q - z) + D needs a fractional zero z - D/s; GPTQ v1 stores integer zeros
// 1..16 and fp16 scales. Rounding the zero alone moves every weight of a group by the same amount
// c (|c| <= s/2): when |D| < s/2 (most groups of a typical fine-tune) it drops the update
// entirely, and the update is what QA-LoRA learned: lora_A sees group means, so D changes each
// group's mean and nothing else. A least-squares fit alone does not help there: dropping D costs
// c^2 per weight, less than any re-rounding. So the fit minimises, per group of targets t,
//
//   cost = sum_i e_i^2 + (sum_i e_i)^2,   e = s' * (q' - z') - t,
//
// the squared error plus the squared error of the group's sum (the error for inputs that share a
// common component within the group, the direction the update lives in). Per group:
//   - candidate fp16 scales s': the training scale times 1 - 1/16 .. 1 + 1/16 in steps of 1/64,
//     and the tightest scale whose 16 codes can cover the group times 11/12 .. 3/2 in steps of
//     1/12 (17; on the micro test runs 9 or 33 of them give the same held-out loss within noise);
//   - for each: codes q' = clamp(round(t / s') + z', 0, 15) with an integer z' in 1..16 that keeps
//     them in range when one exists; then k = round(-sum e / s') codes move one step (up when
//     k > 0) so that the group's sum comes back, the codes whose move adds least squared error
//     first, ties going to those that move toward `tie_break` (the original weights plus the
//     update: the codes the base's own rounding pushed furthest the other way);
//   - the candidate of least cost, or the rounded-zero solution when none costs less.
// No scale is below kGptqMinScale. Runs on the device of its inputs (17 x g values per group).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qtrain {

// The smallest normal fp16 value: scales below it (a group of near-zero weights) are raised to it
// rather than written as fp16 subnormals or zero.
constexpr float kGptqMinScale = 6.103515625e-05f;  // 2^-14

struct GptqFit {
  at::Tensor codes;   // uint8 [out, in], 0..15
  at::Tensor zeros;   // float32 [out, groups], integers 1..16
  at::Tensor scales;  // float32 [out, groups], fp16 values >= kGptqMinScale
};

struct GptqFitStats {
  int64_t groups = 0;
  int64_t weights = 0;
  int64_t refit_groups = 0;     // groups written with other codes or scale than rounded zeros
  int64_t floored_scales = 0;   // groups whose best scale was below kGptqMinScale
  int64_t clamped_rounded = 0;  // rounded zeros outside 1..16 (the rounded-zero solution clamps)
  int64_t dropped_rounded = 0;  // groups whose update rounding the zero alone drops (|D/s| < 1/2)
  // Sums over the weights of squared errors against the merged weights, and over the groups of
  // squared errors of the group mean: of the rounded-zero solution and of the fit.
  double sse_rounded = 0;
  double sse_fitted = 0;
  double mean_sse_rounded = 0;
  double mean_sse_fitted = 0;
  double max_error_rounded = 0;
  double max_error_fitted = 0;
  double sum_sq_update = 0;  // sum over groups of D^2: the size of what training learned
};

// The rounded-zero solution: training codes, zero clamp(round(z - D/s), 1, 16), scale fp16(s)
// floored at kGptqMinScale. codes uint8 [out, in], scales / zeros / delta float32 [out, groups].
// Counts clamped and dropped zeros into `stats` when given.
GptqFit gptq_round_zeros(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros,
                         const at::Tensor& delta, GptqFitStats* stats = nullptr);

// The fit described above for targets `merged` float32 [out, in] (groups of `group_size`
// consecutive inputs), with `tie_break` float32 [out, in] (or undefined: ties by position) and
// `rounded` = gptq_round_zeros of the same weight. Adds its figures to `stats` when given.
GptqFit fit_gptq_groups(const at::Tensor& merged, const at::Tensor& tie_break, int64_t group_size,
                        const GptqFit& rounded, GptqFitStats* stats = nullptr);

// float32 [out, in]: scales * (codes - zeros), computed as GPTQ readers do.
at::Tensor gptq_fit_dequantize(const GptqFit& fit, int64_t group_size);

}  // namespace qtrain

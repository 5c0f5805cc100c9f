// The next-token loss of a causal language model, summed so that gradient accumulation can
// normalise by the number of loss tokens of the whole optimizer step (a step of k micro-batches
// then equals one batch k times as large).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qtrain {

// Tokens of `labels` that carry loss after the causal shift: label[:, 1:] != kIgnoreLabel
// (data/examples.h).
int64_t count_loss_tokens(const at::Tensor& labels);

// logits [B, T, V] (any float dtype), labels [B, T] int64 with kIgnoreLabel where no loss applies
// -> scalar float32: sum over b, t < T-1 of cross_entropy(logits[b, t], labels[b, t + 1]),
// computed in float32.
at::Tensor causal_lm_loss_sum(const at::Tensor& logits, const at::Tensor& labels);

}  // namespace qtrain

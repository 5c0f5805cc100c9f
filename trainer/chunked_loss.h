// The causal-LM loss straight from the final hidden states, run through the output projection
// and cross-entropy a chunk of loss tokens at a time, so the batch's full-vocabulary logits never
// exist: at a 128k vocabulary, [B, T, V] float32 logits and their gradient are gigabytes, one
// chunk of 1024 tokens is a few hundred megabytes.
//
// Only the positions that carry loss are projected. Forward keeps nothing of a chunk but its
// summed loss; backward recomputes each chunk's logits (replaying lm_head's dropout draws) and
// sends the gradient on to the hidden states and to lm_head's own trainable parameters (LoRA on
// lm_head), whose .grad accumulates as with any other module.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qtrain {

class LinearSlot;

// hidden [B, T, H] (CausalLM::hidden_states, model dtype; requires grad in training), lm_head
// the model's output projection (any LinearSlot: dense, tied, quantized, adapter-wrapped),
// labels [B, T] int64 on the HOST with kIgnoreLabel (data/examples.h) where no loss applies.
// chunk_tokens: loss tokens per chunk, 0 = one chunk of all of them.
// -> scalar float32 on hidden's device: the sum over b, t < T-1 with labels[b, t+1] !=
// kIgnoreLabel of cross_entropy(lm_head(hidden[b, t]), labels[b, t+1]), each chunk's logits in
// float32 (causal_lm_loss_sum(lm_head(hidden), labels) without its [B, T, V] tensors).
// Reads the labels on the host: no device synchronisation (index and target copies go through
// pinned memory on CUDA). With no loss token it returns a zero that still back-propagates (zero
// gradients reach hidden and lm_head, as with the full path). Under NoGradGuard, or when neither
// hidden nor lm_head needs a gradient, it only runs the forward chunks.
// Throws Error(kInternal) for mismatched shapes, device labels or a label outside [0, V): caller
// bugs (labels come from the tokenizer, which TRN-04 keeps within the vocabulary).
at::Tensor chunked_causal_lm_loss_sum(const at::Tensor& hidden, LinearSlot& lm_head,
                                      const at::Tensor& labels, int64_t chunk_tokens);

}  // namespace qtrain

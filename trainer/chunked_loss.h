// The causal-LM loss straight from the final hidden states, run through the output projection
// and cross-entropy a chunk of loss tokens at a time, so the batch's full-vocabulary logits never
// exist: at a 128k vocabulary, [B, T, V] float32 logits and their gradient are gigabytes, one
// chunk of 1024 tokens is a few hundred megabytes.
//
// Only the positions that carry loss are projected. The loss always ends the graph, so its
// incoming gradient is one scalar: when a gradient is needed, forward runs each chunk's lm_head
// once, with autograd, computes the float32 cross-entropy and its logits' gradient
// (softmax - onehot) by hand, in place over lm_head's output, and pushes that gradient back
// through lm_head at once (torch::autograd::grad with it as grad_outputs). It keeps
// d loss / d hidden for the loss rows [N, H] (model dtype) and, for lm_head's trainable
// parameters (LoRA on lm_head), their gradients summed over the chunks in float32 (float64 for
// float64 parameters); backward only scales them by the incoming gradient (Liger-kernel's fused
// linear cross-entropy). lm_head's dropout is drawn once, in forward. Parameters' .grad
// accumulates once per backward, as with any other module, but their tensor hooks also see each
// chunk's partial gradient during forward (autograd::grad runs them).
//
// Memory, per chunk of C loss tokens, with s the bytes of lm_head's output dtype (the model's):
// C * V * s for the logits, which become their own gradient, plus min(C, 128) * V * 4 for a
// float32 working block when that dtype is not float32 (float32: 4 bytes per logit, bfloat16:
// 2 bytes plus the block), in training and evaluation alike. lm_head's own temporaries come on
// top: none for a dense or quantized head; a LoRA on lm_head holds up to three [C, V] tensors of
// its forward at once and one more in backward (its scaled copy of the gradient).
// Soft-capped logits (Gemma 2's final_logit_softcapping c > 0: z = c * tanh(logits / c), the
// cross-entropy taken of z, the gradient (softmax(z) - onehot) * (1 - tanh(logits / c)^2)) add one
// float32 block in training: min(C, 128) * V * 4 bytes more (float32 logits then need
// C * V * 4 + min(C, 128) * V * 4, other dtypes C * V * s + 2 * min(C, 128) * V * 4); forward
// only (evaluation) adds nothing. Without a cap the arithmetic is unchanged, bit for bit.
// The float32 arithmetic is the full path's formula, rounded differently (exp(x - max) / sum
// rather than exp of the log-probabilities): float32 agrees to float32 rounding, not bit for bit.
//
// Backward: as for any autograd graph, a second backward needs retain_graph (it then gives the
// same gradients again); differentiating the gradient (create_graph) is refused with
// Error(kInternal): the stored gradients are constants, their derivative would be wrong.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qtrain {

class LinearSlot;

// hidden [B, T, H] (CausalLM::hidden_states, model dtype; requires grad in training), lm_head
// the model's output projection (any LinearSlot: dense, tied, quantized, adapter-wrapped),
// labels [B, T] int64 on the HOST with kIgnoreLabel (data/examples.h) where no loss applies.
// chunk_tokens: loss tokens per chunk, 0 = one chunk of all of them.
// final_logit_softcap: the model config's final_logit_softcapping (CausalLM::forward applies it
// after lm_head), 0 (or below) = none; with c > 0 each logit l becomes c * tanh(l / c) in float32.
// -> scalar float32 on hidden's device: the sum over b, t < T-1 with labels[b, t+1] !=
// kIgnoreLabel of cross_entropy(softcap(lm_head(hidden[b, t])), labels[b, t+1]), each chunk's
// logits in float32 (causal_lm_loss_sum(CausalLM::forward logits, labels) without its [B, T, V]
// tensors).
// Reads the labels on the host: no device synchronisation (index and target copies go through
// pinned memory on CUDA). With no loss token it returns a zero that still back-propagates (zero
// gradients reach hidden and lm_head, as with the full path). Under NoGradGuard, or when neither
// hidden nor lm_head needs a gradient, it only runs the forward chunks (no gradient work).
// Throws Error(kInternal) for mismatched shapes, device labels or a label outside [0, V): caller
// bugs (labels come from the tokenizer, which TRN-04 keeps within the vocabulary).
at::Tensor chunked_causal_lm_loss_sum(const at::Tensor& hidden, LinearSlot& lm_head,
                                      const at::Tensor& labels, int64_t chunk_tokens,
                                      double final_logit_softcap = 0);

// The same chunked projection, one cross-entropy per loss position, for objectives over whole
// sequences (DPO, ORPO): values [N] float32, in the order of the positions (row b ascending, then
// t), differentiable with respect to hidden (its gradient [N, H] is computed in forward and kept,
// N x H in the model's dtype); rows [N] int64 on hidden's device: the batch row b of each. lm_head
// must be frozen when a gradient is needed (Error(kInternal) otherwise: a per-token gradient
// through trainable lm_head parameters would need each token's own outer product).
struct TokenCrossEntropy {
  at::Tensor values;
  at::Tensor rows;
};
TokenCrossEntropy chunked_token_cross_entropy(const at::Tensor& hidden, LinearSlot& lm_head,
                                              const at::Tensor& labels, int64_t chunk_tokens,
                                              double final_logit_softcap = 0);

}  // namespace qtrain

// What a recipe will hold in device memory, from the model's config alone (no weight is read):
// the numbers --dry-run prints before a long job is scheduled.
//
// base_weights      exact: quantized linears + dense rest (models/quantized_memory.h); int4 as
//                   quant/int4_group.h stores it (packed codes, float32 scales and zeros per
//                   group); none: everything in model.dtype.
// adapter_params    exact, in adapter.dtype: LoRA r*(in+out) per targeted linear; QA-LoRA
//                   r*(in/group_size + out) (its A acts on the group-pooled input).
// adapter_grads     same size as the adapter parameters.
// optimizer_states  AdamW: two float32 states per parameter; 8-bit: two uint8 states plus a
//                   float32 absmax per 256 values per state, except tensors under 4096 values,
//                   which keep float32 states (bitsandbytes' min_8bit_size). Paged variants hold
//                   the same bytes (evictable to host).
// activations       the most forward and backward hold for B = micro_batch_size sequences of
//                   T = max_seq_len tokens, with a = bytes of model.dtype, ad = of adapter.dtype;
//                   what autograd saves per token of one decoder layer ("full layer"):
//                     a * (2H [input norm in/out] + (nH + 2 nKV) hd [q, k after RoPE, v]
//                          + nH hd [attention out] + 2H [post-attention norm in/out]
//                          + 4I [gate, silu(gate), up, their product])
//                     + 4 nH [attention logsumexp] + 8 [two RMSNorm rstd]
//                     + packed rows outside the flash kernel (CPU, float32, odd head_dim):
//                       a nH hd [each segment's attention output and their concatenation]
//                     + per targeted linear: r ad [lora_A out] + (dropout > 0 or ad != a:
//                       in ad [dropped/cast input]) + (dropout > 0: in [bool mask])
//                       + (qalora: in/group_size ad [pooled input])
//                   plus a * 2H + 4 for the final norm. Attention is the memory-efficient kind
//                   (no T x T scores). Without checkpointing every layer keeps its full layer;
//                   with checkpointing each layer keeps only its input (a H), and backward
//                   recomputes one full layer at a time (the largest counts). Adapters on
//                   lm_head add their terms to the final norm's. On top, the backward working
//                   set: max(the largest quantized decoder projection dequantized, out * in * a,
//                   or its row slice above 2^26 elements (quant/frozen_linear.h); B T * 2I * a,
//                   the gradients of gate and up). Measured on the CPU
//                   (tests/trainer/test_memory_calibration.cpp, allocator bytes): within 3% for
//                   all-linear targets; targets that leave a projection frozen count its input,
//                   which a frozen projection does not keep (q_proj alone: ~20% over).
// logits            the chunked loss (trainer/chunked_loss.h) holds one chunk of
//                   C = training.loss_chunk_tokens loss tokens (0 or more than B * T: C = B * T)
//                   at a time: lm_head's output C * vocab * a, which becomes its own gradient (a
//                   LoRA on lm_head: three such tensors), a float32 block of min(C, 128) rows
//                   (vocab * 4 each) when a is not 4, the chunk rows' gradient C * H * a and a
//                   quantized lm_head dequantized (vocab * H * a, or its row slice); plus 2 a H
//                   per token for the gathered loss rows and their gradient.
// total             the peak, not the sum: the loss runs after forward, when only what forward
//                   keeps (checkpointed inputs, or every layer) and the final norm are alive, and
//                   is gone before backward recomputes a layer; total = states + max(activations,
//                   kept + final norm + logits), states being base weights, adapters, their
//                   gradients and optimizer states.
// optimizer_states  + 4 bytes per adapter parameter for the float32 masters when adapter.dtype
//                   is not float32.
// paged_states      the part of optimizer_states in managed memory: paged optimizers on CUDA,
//                   tensors of >= kPagedMinNumel (1e5) elements (trainer/optim/state_memory.h).
// On CUDA (model.device cuda or auto), two recipe options move bytes to host memory, counted
// apart from `total` (pinned host RAM, not GPU memory):
// host_embeddings   model.embeddings_on_host: vocab * H * a leaves base_weights.
// host_activations  training.offload_activations: the inputs of all layers but the first and the
//                   last, a * H per token each; the device keeps four (first, last, the one
//                   coming back and the one prefetched).
// Not counted: CUDA context, allocator fragmentation, the batch's token ids, temporaries of a
// few [T, H] (a per-token a H each).
#pragma once

#include "models/config.h"
#include "trainer/recipe/recipe.h"

#include <cstdint>
#include <string>

namespace qtrain {

struct MemoryEstimate {
  int64_t base_weights = 0;  // bytes, like every field but adapter_param_count
  int64_t adapter_params = 0;
  int64_t adapter_grads = 0;
  int64_t optimizer_states = 0;
  int64_t paged_states = 0;  // of optimizer_states
  int64_t activations = 0;
  int64_t logits = 0;
  int64_t total = 0;                // device memory at the peak (see above: not the sum)
  int64_t host_embeddings = 0;      // pinned host memory instead of device memory
  int64_t host_activations = 0;     // pinned host memory, per micro-batch
  int64_t adapter_param_count = 0;  // trainable parameters (elements)

  // One line per component and the total, in GiB with 2 decimals.
  std::string to_table() const;
};

MemoryEstimate estimate_memory(const Recipe& recipe, const ModelConfig& config);

}  // namespace qtrain

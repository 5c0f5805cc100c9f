// Gradient checkpointing of one decoder layer: the forward pass keeps only the layer's input;
// the backward pass runs the layer again with the random-number state of the first run, so
// dropout draws the same masks, and back-propagates through the recomputed graph.
#pragma once

#include "models/activation_offload.h"
#include "models/attention_mask.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

namespace qtrain {

class DecoderLayer;

// x [B, T, H], cos/sin [B, T, head_dim], layout: the attention mask or packed segments (no KV
// cache) -> [B, T, H].
// Gradients reach x and every trainable parameter inside `layer`; x must require grad for the
// backward pass to run at all (CausalLM makes the embedding output require it). `layer` must
// outlive the backward pass. With an `offloader`, x is handed to it as layer `index` instead of
// being kept (models/activation_offload.h).
at::Tensor checkpointed_layer(DecoderLayer& layer, const at::Tensor& x, const at::Tensor& cos,
                              const at::Tensor& sin, const AttentionLayout& layout,
                              std::shared_ptr<ActivationOffloader> offloader = nullptr,
                              int64_t index = 0);

}  // namespace qtrain

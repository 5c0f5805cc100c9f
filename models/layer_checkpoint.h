// Gradient checkpointing of one decoder layer: the forward pass keeps only the layer's input;
// the backward pass runs the layer again with the random-number state of the first run, so
// dropout draws the same masks, and back-propagates through the recomputed graph.
#pragma once

#include <ATen/core/Tensor.h>

namespace qtrain {

class DecoderLayer;

// x [B, T, H], cos/sin [B, T, head_dim], mask [B, 1, T, T] bool or undefined -> [B, T, H].
// Gradients reach x and every trainable parameter inside `layer`; x must require grad for the
// backward pass to run at all (CausalLM makes the embedding output require it). `layer` must
// outlive the backward pass.
at::Tensor checkpointed_layer(DecoderLayer& layer, const at::Tensor& x, const at::Tensor& cos,
                              const at::Tensor& sin, const at::Tensor& mask);

}  // namespace qtrain

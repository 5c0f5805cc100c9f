// Quantize-on-load into group-wise INT4 (QA-LoRA's base format): an HF BF16/FP16/FP32 checkpoint
// becomes a model whose projections are frozen Int4LinearSlots, streamed one tensor at a time from
// the mmap'd shards like load_quantized_causal_lm (read, quantize on the target device, release).
#pragma once

#include "models/llama.h"

#include <c10/core/Device.h>

#include <memory>
#include <string>
#include <vector>

namespace qtrain {

struct Int4LoadOptions {
  at::ScalarType dtype = at::kBFloat16;  // compute dtype: activations, embeddings, norms, biases
  c10::Device device = c10::kCPU;
  int64_t group_size = 32;  // 32, 64 or 128; every quantized projection's in_features must divide
  // Projections kept dense in the compute dtype; see is_skipped_module (quantized_loader.h).
  std::vector<std::string> skip_modules = {"lm_head"};
  // kHost: the embedding table is read straight into host memory (model.embeddings_on_host).
  EmbeddingPlacement embeddings = EmbeddingPlacement::kDevice;
};

// Throws Error(kConfig) for an unsupported group size (before reading any weight), Error(kShape)
// naming the tensor for a missing, mis-shaped or indivisible projection, and whatever
// load_hf_weights throws for the remaining tensors; a tied model with EmbeddingPlacement::kHost is
// refused with Error(kConfig) naming model.embeddings_on_host before any weight is read.
std::shared_ptr<CausalLM> load_int4_causal_lm(const std::string& dir,
                                              const Int4LoadOptions& options);

}  // namespace qtrain

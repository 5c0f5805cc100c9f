// Synthetic-weight models for benchmarks: any published shape (an 8B, a 70B) with weights drawn
// by seed on the target device and, projection by projection, quantized there before the next is
// drawn, so large shapes are measurable without their checkpoints and host memory never holds
// them. Values: projections and embeddings N(0, init_std), norms 1 (HF's initializer_range
// scheme), so activations and losses look like an untrained model's.
#pragma once

#include "models/llama.h"
#include "quant/quantized_tensor.h"

#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

class ShardedLoad;

struct SyntheticModelOptions {
  at::ScalarType dtype = at::kBFloat16;  // compute dtype: embeddings, norms, dense projections
  c10::Device device = c10::kCPU;
  std::optional<QuantConfig> quant;                     // nullopt: dense projections
  std::vector<std::string> skip_modules = {"lm_head"};  // kept dense (is_skipped_module)
  uint64_t seed = 0;
  double init_std = 0.02;
  // kHost: the embedding table is drawn in host memory (model.embeddings_on_host); its values then
  // come from the CPU generator, not the device's.
  EmbeddingPlacement embeddings = EmbeddingPlacement::kDevice;
  // distributed.strategy shard: each decoder projection is drawn and quantized by its owning
  // rank only and arrives as a shard (models/sharded_load.h).
  ShardedLoad* sharded = nullptr;
};

// Error(kConfig) before anything is allocated when the model needs more than the device's total
// memory. The same (config, options) give the same weights on the same device type. Every
// projection of the result is a QuantizedLinearSlot (unless skipped or options.quant is nullopt).
std::shared_ptr<CausalLM> make_synthetic_causal_lm(const ModelConfig& config,
                                                   const SyntheticModelOptions& options);

}  // namespace qtrain

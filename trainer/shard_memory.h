// qmem's per-rank view of distributed.strategy shard (trainer/distributed/sharded_base.h), from
// the model's config alone: each of N ranks keeps 1/N of the decoder layers' quantized
// projections (codes, absmax, nested statistics, code tables; padded per projection to N equal
// shards, pieces 16-byte aligned) and holds at most 1 + distributed.prefetch of them gathered
// whole at once (the one in use and those prefetched; their dequantized form is the activations'
// backward working set, already in MemoryEstimate). Embeddings, norms, lm_head, adapters,
// gradients, optimizer states and activations are replicated: unchanged per rank.
#pragma once

#include "models/config.h"
#include "trainer/memory_estimate.h"
#include "trainer/recipe/recipe.h"

#include <cstdint>
#include <string>

namespace qtrain {

struct ShardedBaseMemory {
  int64_t world_size = 1;
  int64_t base_whole = 0;      // MemoryEstimate::base_weights: every rank's base under ddp
  int64_t sharded_whole = 0;   // the decoder layers' quantized projections, all of them
  int64_t shard = 0;           // one rank's part of them (padding and alignment included)
  int64_t gathered = 0;        // the 1 + prefetch largest projections, whole
  int64_t base_per_rank = 0;   // base_whole - sharded_whole + shard + gathered
  int64_t total_per_rank = 0;  // estimate.total with base_per_rank for base_weights
};

// Error(kConfig) naming distributed.strategy when the recipe's base is not quantized blockwise
// (quantization none or int4: nothing would be sharded); world_size >= 1.
ShardedBaseMemory sharded_base_memory(const Recipe& recipe, const ModelConfig& config,
                                      const MemoryEstimate& estimate, int64_t world_size);

// Lines for qmem: the per-rank figures in GiB with 2 decimals.
std::string describe_sharded_base_memory(const ShardedBaseMemory& memory);

}  // namespace qtrain

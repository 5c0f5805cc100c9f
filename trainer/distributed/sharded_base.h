// distributed.strategy: shard. Every decoder layer's quantized projections are replaced, before
// adapters wrap them, by ShardedQuantizedSlots (models/sharded_linear_slot.h) that keep this
// rank's 1/N of the quantized bytes and all-gather the rest through the job's c10d process group
// just before use. Embeddings, norms and lm_head stay replicated; adapters stay replicated and are
// reduced by the GradReducer as under ddp, so checkpoints and exports are unchanged.
#pragma once

#include "models/sharded_linear_slot.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <vector>

namespace qtrain {

class CausalLM;
class DataParallel;
class ProcessGroup;
struct Recipe;

class ShardedBase {
 public:
  // Shards `model`'s decoder-layer quantized projections over `group`. Within a layer, each
  // projection's forward starts the gathers of the next `prefetch` ones. Error(kConfig) naming
  // distributed.strategy when the base has no quantized decoder projection (quantization none or
  // int4).
  static std::unique_ptr<ShardedBase> shard(CausalLM& model, ProcessGroup& group, int64_t prefetch);

  int64_t sharded_projections() const { return projections_; }
  // The sharded projections' quantized bytes, whole (padded to N shards), and this rank's part.
  int64_t whole_bytes() const { return whole_bytes_; }
  int64_t shard_bytes() const { return shard_bytes_; }
  const ShardTraffic& traffic() const { return *traffic_; }

  // Marks the start of an optimizer step for step_metrics().
  void begin_step();
  // {"gathered_bytes": received by all-gathers since begin_step(), "peak_gathered_bytes": the
  // most gathered weight bytes alive at once since then, "resident_base_bytes":
  // resident_quantized_bytes(model), "resident_base_bytes_per_rank": every rank's, measured
  // right after sharding}.
  nlohmann::json step_metrics(const CausalLM& model) const;
  const std::vector<int64_t>& resident_bytes_per_rank() const { return resident_per_rank_; }

 private:
  std::shared_ptr<ShardTraffic> traffic_ = std::make_shared<ShardTraffic>();
  int64_t projections_ = 0, whole_bytes_ = 0, shard_bytes_ = 0;
  int64_t gathered_at_step_ = 0;
  std::vector<int64_t> resident_per_rank_;

  friend std::unique_ptr<ShardedBase> shard_base_if_asked(const Recipe&, DataParallel&, CausalLM&);
};

// Bytes of quantized base storage `model` holds on this rank, measured on the live tensors: the
// distinct storages (a view counts its whole storage once) under every quantized projection,
// sharded or not, adapters looked through.
int64_t resident_quantized_bytes(const CausalLM& model);

// What the trainer calls between loading the base and attaching adapters: shards `model` when
// the recipe asks for distributed.strategy shard and the job has more than one rank; null
// otherwise (a single process keeps its whole base, and says so).
std::unique_ptr<ShardedBase> shard_base_if_asked(const Recipe& recipe, DataParallel& dp,
                                                 CausalLM& model);

}  // namespace qtrain

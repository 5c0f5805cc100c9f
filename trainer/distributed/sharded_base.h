// distributed.strategy: shard. Every decoder layer's quantized projections load as
// ShardedQuantizedSlots (models/sharded_linear_slot.h): each is read and quantized by one rank,
// which scatters it (models/sharded_load.h); every rank keeps its 1/N of the quantized bytes and
// all-gathers the rest through the job's c10d process group just before use. Embeddings, norms and
// lm_head stay replicated; adapters stay replicated and are reduced by the GradReducer as under
// ddp, so checkpoints and exports are unchanged.
#pragma once

#include "models/sharded_linear_slot.h"
#include "models/sharded_load.h"

#include <c10/core/Device.h>

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
  // Before the base loads: the loaders stream the decoder projections through load(), each read
  // and quantized by one rank and scattered (models/sharded_load.h). Shards live on `device`.
  ShardedBase(ProcessGroup& group, int64_t prefetch, c10::Device device);
  ShardedLoad& load() { return *load_; }

  // After the base has loaded, before adapters wrap it: joins each decoder layer's sharded slots
  // into a gather chain (each projection's forward starts the gathers of the next `prefetch`),
  // measures every rank's residency (a collective) and logs it. Error(kConfig) naming
  // distributed.strategy when nothing was sharded.
  void adopt(CausalLM& model, DataParallel& dp);

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
  // right after loading}.
  nlohmann::json step_metrics(const CausalLM& model) const;
  const std::vector<int64_t>& resident_bytes_per_rank() const { return resident_per_rank_; }

 private:
  std::shared_ptr<ShardTraffic> traffic_ = std::make_shared<ShardTraffic>();
  std::unique_ptr<ShardedLoad> load_;
  int64_t prefetch_ = 1;
  int64_t projections_ = 0, whole_bytes_ = 0, shard_bytes_ = 0, used_bytes_ = 0;
  int64_t gathered_at_step_ = 0;
  std::vector<int64_t> resident_per_rank_;
};

// Bytes of quantized base storage `model` holds on this rank, measured on the live tensors: the
// distinct storages (a view counts its whole storage once) under every quantized projection,
// sharded or not, adapters looked through.
int64_t resident_quantized_bytes(const CausalLM& model);

// Null unless the recipe asks for distributed.strategy shard and the job has more than one rank
// (a single process keeps its whole base, and says so). Error(kConfig) naming
// distributed.strategy for a base shard cannot split (quantization none or int4), before anything
// loads. `device`: where this rank's model lives.
std::unique_ptr<ShardedBase> sharded_base_if_asked(const Recipe& recipe, DataParallel& dp,
                                                   c10::Device device);

}  // namespace qtrain

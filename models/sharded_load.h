// Streamed loading of a sharded base (distributed.strategy: shard). A loader hands each decoder
// projection's producer (read the source weight, quantize it) to a ShardedLoad instead of running
// it, and gets back an empty ShardedQuantizedSlot. finish() then runs the producers in rounds of
// N ranks: projection i belongs to rank i mod N, which alone reads and quantizes it, lays it out
// flat and scatters it, so every rank keeps only its 1/N. Each rank thus reads and quantizes
// 1/N of the projections and, while loading, holds its shards plus at most one whole weight.
#pragma once

#include "models/sharded_linear_slot.h"
#include "quant/quantized_tensor.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace qtrain {

class ShardedLoad {
 public:
  using Producer = std::function<QuantizedTensor()>;

  // Shards and the scatter buffers live on `device` (the backend's device type).
  ShardedLoad(std::shared_ptr<ShardComm> comm, std::shared_ptr<ShardTraffic> traffic,
              c10::Device device);

  int world_size() const { return comm_->world_size(); }

  // True for the projections that are sharded: the decoder layers' ("model.layers.*").
  static bool shards(const std::string& module);

  // The slot for projection `module` [out, in]; `produce` runs later, on its owner only, and must
  // return a weight of shape [out, in]. `bias` [out] or undefined, the same on every rank. Every
  // rank must defer the same projections in the same order.
  std::shared_ptr<ShardedQuantizedSlot> defer(const std::string& module, int64_t in, int64_t out,
                                              at::Tensor bias, Producer produce);
  // True when this rank reads and quantizes the next deferred projection.
  bool owns_next() const;

  // Produces and distributes every deferred weight (a collective), then forgets the producers.
  void finish();

  struct Stats {
    int64_t projections = 0;     // deferred on every rank
    int64_t produced = 0;        // read and quantized by this rank
    int64_t produced_bytes = 0;  // their quantized bytes
    int64_t shard_bytes = 0;     // kept by this rank
    // The most quantized bytes this rank's live tensors held at once while loading: its shards
    // so far, plus the whole weight it was distributing.
    int64_t peak_held_bytes = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  struct Item {
    std::string module;
    std::shared_ptr<ShardedQuantizedSlot> slot;
    Producer produce;
  };
  std::shared_ptr<ShardComm> comm_;
  std::shared_ptr<ShardTraffic> traffic_;
  c10::Device device_;
  std::vector<Item> items_;
  Stats stats_;
};

}  // namespace qtrain

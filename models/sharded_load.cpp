#include "models/sharded_load.h"

#include "core/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <utility>

namespace qtrain {
namespace {

constexpr int64_t kHeaderInts = 128;  // an encoded layout is ~40 integers

struct Produced {
  std::vector<int64_t> layout;
  at::Tensor flat;  // uint8 [padded_bytes]
};

}  // namespace

ShardedLoad::ShardedLoad(std::shared_ptr<ShardComm> comm, std::shared_ptr<ShardTraffic> traffic,
                         c10::Device device)
    : comm_(std::move(comm)), traffic_(std::move(traffic)), device_(device) {
  if (!comm_ || !traffic_) throw_error(ErrorKind::kInternal, "a sharded load needs comm, traffic");
}

bool ShardedLoad::shards(const std::string& module) {
  return module.rfind("model.layers.", 0) == 0;
}

std::shared_ptr<ShardedQuantizedSlot> ShardedLoad::defer(const std::string& module, int64_t in,
                                                         int64_t out, at::Tensor bias,
                                                         Producer produce) {
  auto slot = std::make_shared<ShardedQuantizedSlot>(in, out, std::move(bias), comm_, traffic_);
  items_.push_back({module, slot, std::move(produce)});
  ++stats_.projections;
  return slot;
}

bool ShardedLoad::owns_next() const {
  return static_cast<int64_t>(items_.size()) % comm_->world_size() == comm_->rank();
}

void ShardedLoad::finish() {
  const int64_t world = comm_->world_size();
  const int rank = comm_->rank();
  const auto bytes = at::TensorOptions().dtype(at::kByte).device(device_);
  const auto ints = at::TensorOptions().dtype(at::kLong).device(device_);
  for (size_t round = 0; round < items_.size(); round += static_cast<size_t>(world)) {
    // This rank's projection of the round, read, quantized and laid out flat; the quantized
    // tensors are dropped as soon as the flat copy exists.
    std::optional<Produced> mine;
    const size_t own = round + static_cast<size_t>(rank);
    if (own < items_.size()) {
      Item& item = items_[own];
      QuantizedTensor weight = item.produce();
      if (weight.shape !=
          std::vector<int64_t>{item.slot->out_features(), item.slot->in_features()}) {
        throw_error(ErrorKind::kInternal,
                    "the weight produced for " + item.module + " has another shape than its slot");
      }
      FlatQuantizedLayout layout(weight, static_cast<int>(world));
      mine = Produced{layout.encode(), layout.flatten(weight).to(device_)};
      ++stats_.produced;
      stats_.produced_bytes += weight.nbytes();
    }
    const int64_t held = mine ? static_cast<int64_t>(mine->flat.nbytes()) : 0;
    stats_.peak_held_bytes = std::max(stats_.peak_held_bytes, stats_.shard_bytes + held);
    const size_t end = std::min(items_.size(), round + static_cast<size_t>(world));
    for (size_t i = round; i < end; ++i) {
      const int owner = static_cast<int>(i - round);
      const bool is_mine = owner == rank;
      at::Tensor header = at::zeros({kHeaderInts}, ints);
      if (is_mine) {
        if (static_cast<int64_t>(mine->layout.size()) >= kHeaderInts) {
          throw_error(ErrorKind::kInternal, "a shard layout is longer than its header");
        }
        header[0] = static_cast<int64_t>(mine->layout.size());
        header.narrow(0, 1, static_cast<int64_t>(mine->layout.size()))
            .copy_(at::tensor(mine->layout, at::kLong));
      }
      comm_->broadcast(header, owner);
      const at::Tensor host = header.cpu();
      const int64_t* h = host.data_ptr<int64_t>();
      if (h[0] <= 0 || h[0] >= kHeaderInts) {
        throw_error(ErrorKind::kInternal, "rank " + std::to_string(owner) +
                                              " sent no shard layout for " + items_[i].module);
      }
      FlatQuantizedLayout layout =
          FlatQuantizedLayout::decode(std::vector<int64_t>(h + 1, h + 1 + h[0]));
      at::Tensor shard = at::empty({layout.shard_bytes()}, bytes);
      comm_->scatter(shard, is_mine ? mine->flat : at::Tensor(), owner);
      stats_.shard_bytes += static_cast<int64_t>(shard.nbytes());
      items_[i].slot->adopt_shard(std::move(layout), std::move(shard));
    }
    stats_.peak_held_bytes = std::max(stats_.peak_held_bytes, stats_.shard_bytes + held);
  }
  items_.clear();
}

}  // namespace qtrain

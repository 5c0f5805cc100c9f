// A frozen quantized base linear sharded across ranks (distributed.strategy: shard): each rank
// keeps 1/N of the weight's quantized bytes and all-gathers the whole just before it is used, once
// for the forward pass (and again for a checkpointed layer's recompute) and once for the backward
// pass; the gathered buffer is freed as soon as the matmul has read it. Traffic stays 4-bit: a
// quarter of what gathering bf16 weights would move.
//
// The weight's storage tensors (codes, absmax, nested codes / absmax / code map, the quant map)
// are laid out in one flat byte buffer, each at a 16-byte aligned offset, zero-padded to a
// multiple of N; rank r keeps bytes [r * S, (r + 1) * S) with S = padded / N. The gathered buffer
// is turned back into a QuantizedTensor of views, so dequantization is the unsharded slot's.
#pragma once

#include "models/linear.h"
#include "models/quantized_linear_slot.h"
#include "quant/frozen_linear.h"
#include "quant/quantized_tensor.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

namespace qtrain {

// The collective a sharded slot gathers through; trainer/distributed supplies c10d's.
class ShardComm {
 public:
  virtual ~ShardComm() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // output uint8 [world_size * n] <- every rank's input uint8 [n], in rank order. Starts the
  // collective; the returned function blocks until it is done. Every rank must start the same
  // gathers in the same order.
  virtual std::function<void()> all_gather(at::Tensor& output, at::Tensor& input) = 0;
  // Rank `root`'s `tensor` into every rank's (same shape and dtype). Blocking.
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  // Rank `root`'s `input` [world_size * n], split in rank order, into each rank's `output` [n];
  // `input` is read on the root only. Blocking.
  virtual void scatter(at::Tensor& output, const at::Tensor& input, int root) = 0;
};

// What the sharded slots of one model moved and hold, shared by all of them (thread-safe).
class ShardTraffic {
 public:
  // Bytes received from the other ranks by every gather so far: shard bytes x (N - 1) each.
  int64_t gathered_bytes() const;
  int64_t gathers() const;
  // Bytes of gathered (whole) weights alive now, and the most alive at once since reset_peak().
  int64_t live_bytes() const;
  int64_t peak_live_bytes() const;
  void reset_peak();

  void on_gather(int64_t received_bytes);
  void on_alive(int64_t bytes);  // a gathered buffer of `bytes` appeared (+) or was freed (-)

 private:
  mutable std::mutex mutex_;
  int64_t gathered_ = 0, gathers_ = 0, live_ = 0, peak_ = 0;
};

// Where each storage tensor of a QuantizedTensor sits in the flat buffer.
class FlatQuantizedLayout {
 public:
  FlatQuantizedLayout(const QuantizedTensor& weight, int world_size);

  int64_t used_bytes() const { return used_; }      // before padding
  int64_t padded_bytes() const { return padded_; }  // a multiple of world_size
  int64_t shard_bytes() const { return padded_ / world_size_; }
  const std::vector<int64_t>& shape() const { return meta_.shape; }  // the weight's
  // uint8 [padded_bytes] on the weight's device.
  at::Tensor flatten(const QuantizedTensor& weight) const;
  // `flat` uint8 [padded_bytes] -> the weight, its tensors views into `flat`.
  QuantizedTensor unflatten(const at::Tensor& flat) const;

  // The layout as integers (no tensor data), for a rank that never saw the weight: decode(encode())
  // is this layout. Error(kInternal) for integers that are no layout.
  std::vector<int64_t> encode() const;
  static FlatQuantizedLayout decode(const std::vector<int64_t>& encoded);

 private:
  FlatQuantizedLayout() = default;

  struct Piece {
    int64_t offset = 0;
    std::vector<int64_t> sizes;
    at::ScalarType dtype = at::kByte;
  };
  QuantizedTensor meta_;  // every tensor undefined
  std::vector<Piece> pieces_;
  int world_size_ = 1;
  int64_t used_ = 0, padded_ = 0;
};

class GatherChain;

class ShardedQuantizedSlot : public LinearSlot {
 public:
  // Keeps comm's rank's shard of `base`'s weight (copied; `base` may be dropped afterwards) and
  // its bias whole. Every rank must construct it from the same weight.
  ShardedQuantizedSlot(const QuantizedLinearSlot& base, std::shared_ptr<ShardComm> comm,
                       std::shared_ptr<ShardTraffic> traffic);
  // A slot whose shard arrives later through adopt_shard() (a streamed load: the weight is
  // quantized on one rank and scattered); `bias` [out] or undefined.
  ShardedQuantizedSlot(int64_t in, int64_t out, at::Tensor bias, std::shared_ptr<ShardComm> comm,
                       std::shared_ptr<ShardTraffic> traffic);
  // `shard` uint8 [layout.shard_bytes()]: this rank's part of a weight laid out as `layout`,
  // whose shape must be [out, in].
  void adopt_shard(FlatQuantizedLayout layout, at::Tensor shard);
  bool has_shard() const { return state_ != nullptr; }

  at::Tensor forward(const at::Tensor& x) override;  // [..., in] -> [..., out]
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }

  const at::Tensor& shard() const;  // uint8 [shard_bytes], this rank's
  const FlatQuantizedLayout& layout() const;
  const at::Tensor& bias() const { return bias_; }
  // The whole weight, gathered from every rank (a collective: every rank calls it).
  QuantizedTensor gather_weight();
  // Joins the slots of a model (sharing `chain`): from their forward passes the chain learns
  // which runs after which (C++ leaves the order of `silu(gate(x)) * up(x)` to the compiler), and
  // from then on each forward pass starts the gathers of the next `depth` slots right after its
  // own (prefetch; 0: none), across layer boundaries.
  void join_chain(std::shared_ptr<GatherChain> chain, int64_t depth);
  void set_max_slice_elements(int64_t elements) { max_slice_elements_ = elements; }

  struct State;

 private:
  std::shared_ptr<State> state_;  // null until the shard is adopted
  std::shared_ptr<ShardComm> comm_;
  std::shared_ptr<ShardTraffic> traffic_;
  std::shared_ptr<GatherChain> chain_;
  int64_t prefetch_depth_ = 0;
  at::Tensor bias_;
  int64_t in_ = 0, out_ = 0;
  int64_t max_slice_elements_ = kFrozenSliceElements;
};

// The order in which a model's sharded slots run their forward passes, learned as they run, in
// two separate orders: passes without gradient mode (evaluation, and the first pass of
// checkpointed layers: layer 0 to N-1) and passes with it (training without checkpointing, layer 0
// to N-1; or the recomputation of checkpointed layers during the backward pass, layer N-1 down to
// 0). In each order, the first slot ever to run starts each pass; every other slot is linked as
// the successor of the one that ran just before it in the same pass. A slot whose successor
// changes between passes gets none.
class GatherChain {
 public:
  using Slot = std::shared_ptr<ShardedQuantizedSlot::State>;
  // `slot` runs its forward pass now (in the current gradient mode); returns up to `depth` slots
  // expected to run next.
  std::vector<Slot> on_forward(const Slot& slot, int64_t depth);

 private:
  struct Order {
    const void* first = nullptr;
    Slot last;
    std::map<const void*, std::weak_ptr<ShardedQuantizedSlot::State>> next;
    std::set<const void*> ambiguous;
  };
  std::mutex mutex_;
  Order orders_[2];  // [grad mode off, on]
};

}  // namespace qtrain

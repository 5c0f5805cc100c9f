#include "models/sharded_linear_slot.h"

#include "core/error.h"
#include "core/int_math.h"
#include "quant/dequantize_rows.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cstring>
#include <utility>

namespace qtrain {
namespace {

constexpr int64_t kPieceAlignment = 16;  // so float32 pieces can be viewed in place

// The storage tensors of `w` in a fixed order; absent ones (no nested state, int8's code) are
// null. The same order for a tensor and its copies.
std::vector<at::Tensor*> storage_tensors(QuantizedTensor& w) {
  std::vector<at::Tensor*> out = {&w.data, &w.absmax, &w.code};
  if (w.nested) {
    out.push_back(&w.nested->codes);
    out.push_back(&w.nested->absmax);
    out.push_back(&w.nested->code);
  }
  return out;
}

// A gathered whole weight: its tensors are views into `flat`, which it owns.
struct GatheredWeight {
  GatheredWeight(at::Tensor buffer, std::shared_ptr<ShardTraffic> t)
      : flat(std::move(buffer)), traffic(std::move(t)) {
    traffic->on_alive(static_cast<int64_t>(flat.nbytes()));
  }
  ~GatheredWeight() { traffic->on_alive(-static_cast<int64_t>(flat.nbytes())); }
  GatheredWeight(const GatheredWeight&) = delete;
  GatheredWeight& operator=(const GatheredWeight&) = delete;

  at::Tensor flat;  // uint8 [padded_bytes]
  std::shared_ptr<ShardTraffic> traffic;
  QuantizedTensor weight;
};

struct InFlight {
  std::shared_ptr<GatheredWeight> gathered;
  std::function<void()> wait;
};

}  // namespace

struct ShardedQuantizedSlot::State {
  State(FlatQuantizedLayout l, at::Tensor s, std::shared_ptr<ShardComm> c,
        std::shared_ptr<ShardTraffic> t)
      : layout(std::move(l)), shard(std::move(s)), comm(std::move(c)), traffic(std::move(t)) {}

  FlatQuantizedLayout layout;
  at::Tensor shard;  // uint8 [shard_bytes]
  std::shared_ptr<ShardComm> comm;
  std::shared_ptr<ShardTraffic> traffic;
  std::mutex mutex;
  std::optional<InFlight> pending;  // a prefetched gather nobody has used yet

  InFlight start_gather() {
    auto gathered = std::make_shared<GatheredWeight>(
        at::empty({layout.padded_bytes()}, shard.options()), traffic);
    traffic->on_gather(layout.shard_bytes() * (comm->world_size() - 1));
    std::function<void()> wait = comm->all_gather(gathered->flat, shard);
    return {std::move(gathered), std::move(wait)};
  }

  void prefetch() {
    std::lock_guard<std::mutex> lock(mutex);
    if (!pending) pending = start_gather();
  }

  // The whole weight: the prefetched gather if one is pending, else a new one.
  std::shared_ptr<const GatheredWeight> acquire() {
    std::optional<InFlight> flight;
    {
      std::lock_guard<std::mutex> lock(mutex);
      flight = pending ? std::move(pending) : start_gather();
      pending.reset();
    }
    flight->wait();
    flight->gathered->weight = layout.unflatten(flight->gathered->flat);
    return flight->gathered;
  }
};

int64_t ShardTraffic::gathered_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return gathered_;
}
int64_t ShardTraffic::gathers() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return gathers_;
}
int64_t ShardTraffic::live_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_;
}
int64_t ShardTraffic::peak_live_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_;
}
void ShardTraffic::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  peak_ = live_;
}
void ShardTraffic::on_gather(int64_t received_bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  gathered_ += received_bytes;
  ++gathers_;
}
void ShardTraffic::on_alive(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  live_ += bytes;
  peak_ = std::max(peak_, live_);
}

FlatQuantizedLayout::FlatQuantizedLayout(const QuantizedTensor& weight, int world_size)
    : meta_(weight), world_size_(world_size) {
  if (world_size < 1) throw_error(ErrorKind::kInternal, "a shard layout needs world_size >= 1");
  for (at::Tensor* t : storage_tensors(meta_)) {
    Piece piece;
    if (t->defined()) {
      piece.offset = ceil_div(used_, kPieceAlignment) * kPieceAlignment;
      piece.sizes = t->sizes().vec();
      piece.dtype = t->scalar_type();
      used_ = piece.offset + static_cast<int64_t>(t->nbytes());
    } else {
      piece.offset = -1;
    }
    pieces_.push_back(std::move(piece));
    *t = at::Tensor();  // the layout keeps no storage alive
  }
  meta_.absmax_cache = nullptr;  // nor the weight's decoded absmax (an opt-in cache)
  padded_ = ceil_div(std::max<int64_t>(used_, 1), world_size) * world_size;
}

at::Tensor FlatQuantizedLayout::flatten(const QuantizedTensor& weight) const {
  QuantizedTensor copy = weight;  // shares the tensors
  const std::vector<at::Tensor*> tensors = storage_tensors(copy);
  if (tensors.size() != pieces_.size()) {
    throw_error(ErrorKind::kInternal, "flatten: the weight differs from the layout's");
  }
  at::Tensor flat =
      at::zeros({padded_}, at::TensorOptions().dtype(at::kByte).device(weight.data.device()));
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Piece& piece = pieces_[i];
    if (piece.offset < 0) continue;
    const at::Tensor bytes = tensors[i]->contiguous().reshape({-1}).view(at::kByte);
    flat.narrow(0, piece.offset, bytes.numel()).copy_(bytes);
  }
  return flat;
}

QuantizedTensor FlatQuantizedLayout::unflatten(const at::Tensor& flat) const {
  QuantizedTensor out = meta_;
  // Its own decoded-absmax cache for the pass, freed with the gathered weight (a cache shared
  // across passes would keep a whole weight's absmax alive on every rank).
  out.absmax_cache = std::make_shared<AbsmaxCache>();
  const std::vector<at::Tensor*> tensors = storage_tensors(out);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Piece& piece = pieces_[i];
    if (piece.offset < 0) continue;
    const int64_t numel = c10::multiply_integers(piece.sizes);
    const int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(piece.dtype));
    *tensors[i] = flat.narrow(0, piece.offset, nbytes).view(piece.dtype).view(piece.sizes);
  }
  return out;
}

namespace {
constexpr int64_t kLayoutMagic = 0x71464c31;  // "qFL1"
}  // namespace

std::vector<int64_t> FlatQuantizedLayout::encode() const {
  std::vector<int64_t> out = {kLayoutMagic,
                              world_size_,
                              used_,
                              padded_,
                              static_cast<int64_t>(meta_.type),
                              static_cast<int64_t>(meta_.dtype),
                              meta_.blocksize,
                              static_cast<int64_t>(meta_.shape.size())};
  out.insert(out.end(), meta_.shape.begin(), meta_.shape.end());
  out.push_back(meta_.nested ? 1 : 0);
  if (meta_.nested) {
    uint32_t bits = 0;
    std::memcpy(&bits, &meta_.nested->offset, sizeof bits);
    out.push_back(meta_.nested->blocksize);
    out.push_back(bits);
  }
  out.push_back(static_cast<int64_t>(pieces_.size()));
  for (const Piece& piece : pieces_) {
    out.push_back(piece.offset);
    out.push_back(static_cast<int64_t>(piece.dtype));
    out.push_back(static_cast<int64_t>(piece.sizes.size()));
    out.insert(out.end(), piece.sizes.begin(), piece.sizes.end());
  }
  return out;
}

FlatQuantizedLayout FlatQuantizedLayout::decode(const std::vector<int64_t>& encoded) {
  size_t at = 0;
  auto next = [&](int64_t low, int64_t high) {
    if (at >= encoded.size() || encoded[at] < low || encoded[at] > high) {
      throw_error(ErrorKind::kInternal,
                  "a shard layout received from another rank is malformed at integer " +
                      std::to_string(at));
    }
    return encoded[at++];
  };
  constexpr int64_t kMax = int64_t{1} << 48;
  auto dims = [&](std::vector<int64_t>& sizes) {
    const int64_t n = next(0, 8);
    for (int64_t i = 0; i < n; ++i) sizes.push_back(next(0, kMax));
  };
  FlatQuantizedLayout out;
  next(kLayoutMagic, kLayoutMagic);
  out.world_size_ = static_cast<int>(next(1, 1 << 20));
  out.used_ = next(0, kMax);
  out.padded_ = next(out.used_, kMax);
  out.meta_.type = static_cast<QuantType>(next(0, 255));
  out.meta_.dtype =
      static_cast<at::ScalarType>(next(0, static_cast<int64_t>(at::ScalarType::NumOptions) - 1));
  out.meta_.blocksize = next(1, kMax);
  dims(out.meta_.shape);
  if (next(0, 1) == 1) {
    NestedAbsmax nested;
    nested.blocksize = next(1, kMax);
    const auto bits = static_cast<uint32_t>(next(0, UINT32_MAX));
    std::memcpy(&nested.offset, &bits, sizeof bits);
    out.meta_.nested = nested;
  }
  const int64_t pieces = next(0, 16);
  for (int64_t i = 0; i < pieces; ++i) {
    Piece piece;
    piece.offset = next(-1, out.used_);
    piece.dtype =
        static_cast<at::ScalarType>(next(0, static_cast<int64_t>(at::ScalarType::NumOptions) - 1));
    dims(piece.sizes);
    out.pieces_.push_back(std::move(piece));
  }
  if (at != encoded.size() || out.pieces_.size() != storage_tensors(out.meta_).size()) {
    throw_error(ErrorKind::kInternal, "a shard layout received from another rank is malformed");
  }
  return out;
}

ShardedQuantizedSlot::ShardedQuantizedSlot(int64_t in, int64_t out, at::Tensor bias,
                                           std::shared_ptr<ShardComm> comm,
                                           std::shared_ptr<ShardTraffic> traffic)
    : comm_(std::move(comm)), traffic_(std::move(traffic)), in_(in), out_(out) {
  if (!comm_ || !traffic_)
    throw_error(ErrorKind::kInternal, "a sharded slot needs comm and traffic");
  if (bias.defined()) bias_ = register_buffer("bias", bias);
}

void ShardedQuantizedSlot::adopt_shard(FlatQuantizedLayout layout, at::Tensor shard) {
  if (state_) throw_error(ErrorKind::kInternal, "a sharded slot adopted a second shard");
  if (layout.shape() != std::vector<int64_t>{out_, in_} || shard.numel() != layout.shard_bytes() ||
      shard.scalar_type() != at::kByte) {
    throw_error(ErrorKind::kInternal, "a shard does not fit its [" + std::to_string(out_) + ", " +
                                          std::to_string(in_) + "] slot");
  }
  register_buffer("shard", shard);
  state_ = std::make_shared<State>(std::move(layout), std::move(shard), comm_, traffic_);
}

ShardedQuantizedSlot::ShardedQuantizedSlot(const QuantizedLinearSlot& base,
                                           std::shared_ptr<ShardComm> comm,
                                           std::shared_ptr<ShardTraffic> traffic)
    : ShardedQuantizedSlot(base.in_features(), base.out_features(), base.bias(), std::move(comm),
                           std::move(traffic)) {
  FlatQuantizedLayout layout(base.weight(), comm_->world_size());
  const int64_t bytes = layout.shard_bytes();
  at::Tensor shard = layout.flatten(base.weight()).narrow(0, comm_->rank() * bytes, bytes).clone();
  // Where the weight lives, for whoever asks (adapters), is the "shard" buffer.
  adopt_shard(std::move(layout), std::move(shard));
}

const at::Tensor& ShardedQuantizedSlot::shard() const {
  return state_->shard;
}
const FlatQuantizedLayout& ShardedQuantizedSlot::layout() const {
  return state_->layout;
}

std::vector<GatherChain::Slot> GatherChain::on_forward(const Slot& slot, int64_t depth) {
  std::lock_guard<std::mutex> lock(mutex_);
  Order& order = orders_[at::GradMode::is_enabled() ? 1 : 0];
  if (order.first == nullptr) order.first = slot.get();
  if (slot.get() == order.first) {
    order.last.reset();  // a new pass
  } else if (order.last && !order.ambiguous.count(order.last.get())) {
    auto known = order.next.find(order.last.get());
    if (known == order.next.end()) {
      order.next.emplace(order.last.get(), slot);
    } else if (known->second.lock() != slot) {
      order.next.erase(known);
      order.ambiguous.insert(order.last.get());
    }
  }
  order.last = slot;
  std::vector<Slot> ahead;
  const void* at = slot.get();
  for (int64_t i = 0; i < depth; ++i) {
    auto known = order.next.find(at);
    if (known == order.next.end()) break;
    Slot next = known->second.lock();
    if (!next || next == slot) break;
    ahead.push_back(next);
    at = next.get();
  }
  return ahead;
}

void ShardedQuantizedSlot::join_chain(std::shared_ptr<GatherChain> chain, int64_t depth) {
  chain_ = std::move(chain);
  prefetch_depth_ = depth;
}

QuantizedTensor ShardedQuantizedSlot::gather_weight() {
  const std::shared_ptr<const GatheredWeight> gathered = state_->acquire();
  return state_->layout.unflatten(gathered->flat.clone());
}

at::Tensor ShardedQuantizedSlot::forward(const at::Tensor& x) {
  std::shared_ptr<State> state = state_;
  if (!state) throw_error(ErrorKind::kInternal, "a sharded slot ran before its shard arrived");
  // The pass's gathered weight, held across the row slices of one pass and dropped after the
  // last; the backward pass finds it empty and gathers again.
  auto held = std::make_shared<std::shared_ptr<const GatheredWeight>>(state->acquire());
  if (chain_) {
    for (const GatherChain::Slot& next : chain_->on_forward(state, prefetch_depth_)) {
      next->prefetch();
    }
  }
  const int64_t out = out_;
  DenseRowsFn rows = [state, held, out](int64_t begin, int64_t end, at::ScalarType dtype) {
    std::shared_ptr<const GatheredWeight> gathered = *held ? *held : state->acquire();
    *held = end == out ? nullptr : gathered;
    const QuantizedTensor& w = gathered->weight;
    // float64 (gradient checks) goes through float32, as the unsharded slot does.
    if (dtype == at::kDouble) return dequantize_rows(w, begin, end, at::kFloat).to(dtype);
    return dequantize_rows(w, begin, end, dtype);
  };
  return frozen_linear(x, {std::move(rows), out_, in_, max_slice_elements_}, bias_);
}

}  // namespace qtrain

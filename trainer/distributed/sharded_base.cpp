#include "trainer/distributed/sharded_base.h"

#include "core/error.h"
#include "core/log.h"
#include "models/int4_linear_slot.h"
#include "models/llama.h"
#include "models/quantized_linear_slot.h"
#include "peft/adapter_slot.h"
#include "trainer/distributed/data_parallel.h"
#include "trainer/distributed/process_group.h"
#include "trainer/recipe/recipe.h"

#include <ATen/ATen.h>

#include <set>
#include <string>
#include <vector>

namespace qtrain {
namespace {

class ProcessGroupShardComm : public ShardComm {
 public:
  explicit ProcessGroupShardComm(ProcessGroup& group) : group_(group) {}
  int rank() const override { return group_.rank(); }
  int world_size() const override { return group_.world_size(); }
  std::function<void()> all_gather(at::Tensor& output, at::Tensor& input) override {
    check_device(input);
    return group_.all_gather_async(output, input);
  }
  void broadcast(at::Tensor& tensor, int root) override {
    check_device(tensor);
    group_.broadcast(tensor, root);
  }
  void scatter(at::Tensor& output, const at::Tensor& input, int root) override {
    check_device(output);
    group_.scatter(output, input, root);
  }

 private:
  void check_device(const at::Tensor& t) const {
    if (t.device().type() == group_.device().type()) return;
    throw_error(ErrorKind::kConfig,
                "the " + group_.backend() + " process group cannot move weights that live on " +
                    t.device().str() + "; use distributed.backend auto",
                {.field = "distributed.backend"});
  }

  ProcessGroup& group_;
};

// The base slot under any adapters.
std::shared_ptr<LinearSlot> base_of(std::shared_ptr<LinearSlot> slot) {
  while (auto adapter = std::dynamic_pointer_cast<AdapterSlot>(slot)) slot = adapter->base();
  return slot;
}

}  // namespace

ShardedBase::ShardedBase(ProcessGroup& group, int64_t prefetch, c10::Device device)
    : load_(std::make_unique<ShardedLoad>(std::make_shared<ProcessGroupShardComm>(group), traffic_,
                                          device)),
      prefetch_(prefetch) {}

void ShardedBase::adopt(CausalLM& model, DataParallel& dp) {
  auto chain = std::make_shared<GatherChain>();  // one for the model: prefetch crosses layers
  for (const auto& [name, slot] : model.named_linears()) {
    const std::string prefix = "model.layers.";
    if (name.rfind(prefix, 0) != 0) continue;
    const auto sharded = std::dynamic_pointer_cast<ShardedQuantizedSlot>(base_of(slot));
    if (!sharded) continue;
    whole_bytes_ += sharded->layout().padded_bytes();
    shard_bytes_ += sharded->layout().shard_bytes();
    used_bytes_ += sharded->layout().used_bytes();
    ++projections_;
    sharded->join_chain(chain, prefetch_);
  }
  if (projections_ == 0) {
    throw_error(ErrorKind::kConfig,
                "shard splits the decoder layers' quantized projections (quantization.type nf4, "
                "fp4 or int8), and this base has none; use distributed.strategy ddp",
                {.field = "distributed.strategy"});
  }
  // Every rank's figures, for rank 0's log: resident, read and quantized, held while loading.
  const size_t world = static_cast<size_t>(dp.world_size()), me = static_cast<size_t>(dp.rank());
  const ShardedLoad::Stats& loaded = load_->stats();
  std::vector<double> figures(4 * world, 0.0);
  figures[me] = static_cast<double>(resident_quantized_bytes(model));
  figures[world + me] = static_cast<double>(loaded.produced);
  figures[2 * world + me] = static_cast<double>(loaded.produced_bytes);
  figures[3 * world + me] = static_cast<double>(loaded.peak_held_bytes);
  dp.sum(figures);
  auto row = [&](size_t which) {
    std::vector<int64_t> out;
    for (size_t r = 0; r < world; ++r)
      out.push_back(static_cast<int64_t>(figures[which * world + r]));
    return out;
  };
  resident_per_rank_ = row(0);
  auto list = [](const std::vector<int64_t>& values) { return nlohmann::json(values).dump(); };
  log::info("distributed.strategy shard: ", projections_, " decoder projections split over ",
            dp.world_size(), " ranks (", whole_bytes_, " quantized bytes whole, ", shard_bytes_,
            " on each rank; prefetch ", prefetch_, "); per rank: read and quantized ", list(row(1)),
            " of ", loaded.projections, " (", list(row(2)), " bytes of ", used_bytes_,
            "), held at most ", list(row(3)), " quantized bytes while loading, resident now ",
            list(resident_per_rank_), " bytes");
}

void ShardedBase::begin_step() {
  gathered_at_step_ = traffic_->gathered_bytes();
  traffic_->reset_peak();
}

nlohmann::json ShardedBase::step_metrics(const CausalLM& model) const {
  return {{"gathered_bytes", traffic_->gathered_bytes() - gathered_at_step_},
          {"peak_gathered_bytes", traffic_->peak_live_bytes()},
          {"resident_base_bytes", resident_quantized_bytes(model)},
          {"resident_base_bytes_per_rank", resident_per_rank_}};
}

int64_t resident_quantized_bytes(const CausalLM& model) {
  std::set<const void*> seen;
  int64_t bytes = 0;
  auto count = [&](const at::Tensor& t) {
    if (!t.defined()) return;
    const c10::Storage& storage = t.storage();
    if (seen.insert(storage.data()).second) bytes += static_cast<int64_t>(storage.nbytes());
  };
  for (const auto& [name, slot] : model.named_linears()) {
    const std::shared_ptr<LinearSlot> base = base_of(slot);
    if (const auto q = std::dynamic_pointer_cast<QuantizedLinearSlot>(base)) {
      const QuantizedTensor& w = q->weight();
      for (const at::Tensor& t : {w.data, w.absmax, w.code}) count(t);
      if (w.nested) {
        for (const at::Tensor& t : {w.nested->codes, w.nested->absmax, w.nested->code}) count(t);
      }
    } else if (const auto s = std::dynamic_pointer_cast<ShardedQuantizedSlot>(base)) {
      count(s->shard());
    } else if (const auto i4 = std::dynamic_pointer_cast<Int4LinearSlot>(base)) {
      const Int4GroupTensor& w = i4->weight();
      for (const at::Tensor& t : {w.codes, w.scales, w.zeros}) count(t);
    }
  }
  return bytes;
}

std::unique_ptr<ShardedBase> sharded_base_if_asked(const Recipe& recipe, DataParallel& dp,
                                                   c10::Device device) {
  const auto& d = recipe.distributed;
  if (d.strategy != "shard") return nullptr;
  const std::string& type = recipe.quantization.type;
  if (type == "none" || type == "int4") {
    throw_error(ErrorKind::kConfig,
                "shard splits the decoder layers' quantized projections (quantization.type nf4, "
                "fp4 or int8), which quantization.type " +
                    type + " does not make; use distributed.strategy ddp",
                {.field = "distributed.strategy"});
  }
  if (!dp.active() || dp.process_group() == nullptr) {
    log::info("distributed.strategy shard: a single process keeps the whole base");
    return nullptr;
  }
  return std::make_unique<ShardedBase>(*dp.process_group(), d.prefetch, device);
}

}  // namespace qtrain

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
    if (input.device().type() != group_.device().type()) {
      throw_error(ErrorKind::kConfig,
                  "the " + group_.backend() + " process group cannot gather weights that live on " +
                      input.device().str() + "; use distributed.backend auto",
                  {.field = "distributed.backend"});
    }
    return group_.all_gather_async(output, input);
  }

 private:
  ProcessGroup& group_;
};

// The base slot under any adapters.
std::shared_ptr<LinearSlot> base_of(std::shared_ptr<LinearSlot> slot) {
  while (auto adapter = std::dynamic_pointer_cast<AdapterSlot>(slot)) slot = adapter->base();
  return slot;
}

}  // namespace

std::unique_ptr<ShardedBase> ShardedBase::shard(CausalLM& model, ProcessGroup& group,
                                                int64_t prefetch) {
  auto out = std::unique_ptr<ShardedBase>(new ShardedBase());
  auto comm = std::make_shared<ProcessGroupShardComm>(group);
  const auto& layers = model.model->layers;
  std::vector<std::vector<std::shared_ptr<ShardedQuantizedSlot>>> per_layer(layers.size());
  for (const auto& [name, slot] : model.named_linears()) {
    const std::string prefix = "model.layers.";
    if (name.rfind(prefix, 0) != 0) continue;  // lm_head stays replicated
    const auto quantized = std::dynamic_pointer_cast<QuantizedLinearSlot>(slot);
    if (!quantized) continue;
    const size_t layer = std::stoul(name.substr(prefix.size()));
    auto sharded = std::make_shared<ShardedQuantizedSlot>(*quantized, comm, out->traffic_);
    out->whole_bytes_ += sharded->layout().padded_bytes();
    out->shard_bytes_ += sharded->layout().shard_bytes();
    ++out->projections_;
    per_layer.at(layer).push_back(sharded);
    model.replace_linear(name, sharded);
  }
  if (out->projections_ == 0) {
    throw_error(ErrorKind::kConfig,
                "shard splits the decoder layers' quantized projections (quantization.type nf4, "
                "fp4 or int8), and this base has none; use distributed.strategy ddp",
                {.field = "distributed.strategy"});
  }
  for (const auto& slots : per_layer) {
    auto chain = std::make_shared<GatherChain>();
    for (const auto& slot : slots) slot->join_chain(chain, prefetch);
  }
  return out;
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

std::unique_ptr<ShardedBase> shard_base_if_asked(const Recipe& recipe, DataParallel& dp,
                                                 CausalLM& model) {
  const auto& d = recipe.distributed;
  if (d.strategy != "shard") return nullptr;
  if (!dp.active() || dp.process_group() == nullptr) {
    log::info("distributed.strategy shard: a single process keeps the whole base");
    return nullptr;
  }
  const int64_t before = resident_quantized_bytes(model);
  std::unique_ptr<ShardedBase> sharded = ShardedBase::shard(model, *dp.process_group(), d.prefetch);
  std::vector<double> per_rank(static_cast<size_t>(dp.world_size()), 0.0);
  per_rank[static_cast<size_t>(dp.rank())] = static_cast<double>(resident_quantized_bytes(model));
  dp.sum(per_rank);
  for (double bytes : per_rank) sharded->resident_per_rank_.push_back(static_cast<int64_t>(bytes));
  log::info("distributed.strategy shard: ", sharded->sharded_projections(),
            " decoder projections split over ", dp.world_size(), " ranks (", sharded->whole_bytes(),
            " quantized bytes whole, ", sharded->shard_bytes(), " on each rank; prefetch ",
            d.prefetch, "); quantized base resident here: ", before, " -> ",
            resident_quantized_bytes(model), " bytes");
  return sharded;
}

}  // namespace qtrain

// The sharded quantized base slot (models/sharded_linear_slot.h) over a real two-rank Gloo group
// (two threads of this process on loopback), against the unsharded QuantizedLinearSlot:
//  - the flat layout round-trips every quantization kind bit for bit, and the shards concatenate
//    to the flat buffer;
//  - each rank keeps half the (padded) bytes; forward and input gradient equal the unsharded
//    slot's exactly, whole or in row slices; one gather per pass, shard bytes received each;
//  - measured by the CPU allocator: a rank holds its shard and nothing more once the whole weight
//    is dropped;
//  - the gather chain learns the forward order in the first pass; from the second on, a
//    projection's forward starts the next one's gather, which that one then uses;
//  - qmem's per-rank figures (trainer/shard_memory.h): the whole and shard bytes bound what real
//    quantized weights and their layouts hold; the 70B FSDP recipe fits 24 GB at N = 4 and 40 GB
//    at N = 2 per rank.
#include "core/error.h"
#include "models/hf_names.h"
#include "models/quantized_linear_slot.h"
#include "models/sharded_linear_slot.h"
#include "tests/support/test_support.h"
#include "tests/trainer/two_rank_gloo.h"
#include "trainer/cpu_allocation_counter.h"
#include "trainer/dry_run.h"
#include "trainer/memory_plan.h"
#include "trainer/recipe/recipe.h"
#include "trainer/shard_memory.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>
#include <thread>
#include <vector>

namespace qtrain {
namespace {

// Values from a formula, not the global generator, which the two rank threads would race for.
at::Tensor formula(std::vector<int64_t> shape, double phase) {
  const int64_t n = c10::multiply_integers(shape);
  return (at::arange(n, at::kFloat) * 0.731 + phase).sin().reshape(shape);
}

std::vector<QuantConfig> configs() {
  return {{.type = QuantType::kNF4, .blocksize = 64, .double_quant = true},
          {.type = QuantType::kFP4, .blocksize = 64, .double_quant = false},
          {.type = QuantType::kInt8, .blocksize = 64, .double_quant = false}};
}

using testing::on_two_ranks;

TEST(FlatQuantizedLayout, RoundTripsEveryKindAndItsShardsConcatenate) {
  for (const QuantConfig& config : configs()) {
    const QuantizedTensor w = quantize(formula({24, 96}, 0.3), config);
    for (int world : {1, 2, 3, 8}) {
      const FlatQuantizedLayout layout(w, world);
      EXPECT_EQ(layout.padded_bytes() % world, 0);
      EXPECT_GE(layout.used_bytes(), w.nbytes());
      EXPECT_LT(layout.padded_bytes() - layout.used_bytes(), world + 16 * 6);
      const at::Tensor flat = layout.flatten(w);
      const QuantizedTensor back = layout.unflatten(flat);
      EXPECT_TRUE(at::equal(back.dequantize(at::kFloat), w.dequantize(at::kFloat)))
          << quant_type_name(config.type) << " world " << world;
      EXPECT_EQ(back.nbytes(), w.nbytes());
      std::vector<at::Tensor> shards;
      for (int r = 0; r < world; ++r) {
        shards.push_back(flat.narrow(0, r * layout.shard_bytes(), layout.shard_bytes()));
      }
      EXPECT_TRUE(at::equal(at::cat(shards), flat));
    }
  }
}

TEST(ShardedQuantizedSlot, EqualsTheUnshardedSlotOnTwoRanks) {
  for (const QuantConfig& config : configs()) {
    for (int64_t slice : {kFrozenSliceElements, int64_t{5 * 96}}) {
      std::vector<std::string> failures(2);
      on_two_ranks([&](int rank, std::shared_ptr<ShardComm> comm) {
        QuantizedLinearSlot whole(quantize(formula({24, 96}, 0.3), config),
                                  formula({24}, 1.1) * 0.1);
        whole.set_max_slice_elements(slice);
        auto traffic = std::make_shared<ShardTraffic>();
        ShardedQuantizedSlot sharded(whole, comm, traffic);
        sharded.set_max_slice_elements(slice);
        std::string& fail = failures[rank];
        const int64_t padded = sharded.layout().padded_bytes();
        if (sharded.shard().numel() * 2 != padded) fail += "shard is not half; ";

        const at::Tensor x0 = formula({3, 5, 96}, 0.7 + rank);
        const at::Tensor xa = x0.clone().requires_grad_(true);
        const at::Tensor xb = x0.clone().requires_grad_(true);
        const at::Tensor g = formula({3, 5, 24}, 2.0);
        const at::Tensor ya = whole.forward(xa), yb = sharded.forward(xb);
        if (!at::equal(ya, yb)) fail += "forward differs; ";
        if (traffic->gathers() != 1 || traffic->live_bytes() != 0) fail += "forward gather; ";
        ya.backward(g);
        yb.backward(g);
        if (!at::equal(xa.grad(), xb.grad())) fail += "grad_x differs; ";
        if (traffic->gathers() != 2) fail += "expected 2 gathers; ";
        if (traffic->gathered_bytes() != 2 * sharded.layout().shard_bytes()) fail += "bytes; ";
        if (traffic->live_bytes() != 0 || traffic->peak_live_bytes() != padded) fail += "live; ";
        const QuantizedTensor back = sharded.gather_weight();
        if (!at::equal(back.dequantize(at::kFloat), whole.weight().dequantize(at::kFloat))) {
          fail += "gathered weight differs; ";
        }
      });
      EXPECT_EQ(failures[0], "") << quant_type_name(config.type) << " slice " << slice;
      EXPECT_EQ(failures[1], "") << quant_type_name(config.type) << " slice " << slice;
    }
  }
}

// Rank `rank` of `world` that never communicates (construction alone needs no collective).
class SilentComm : public ShardComm {
 public:
  SilentComm(int rank, int world) : rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::function<void()> all_gather(at::Tensor&, at::Tensor&) override {
    throw std::logic_error("no collective expected");
  }
  void broadcast(at::Tensor&, int) override { throw std::logic_error("no collective expected"); }
  void scatter(at::Tensor&, const at::Tensor&, int) override {
    throw std::logic_error("no collective expected");
  }

 private:
  int rank_, world_;
};

TEST(ShardedQuantizedSlot, TheAllocatorSeesOnlyTheShardOnceTheWholeIsDropped) {
  const at::Tensor dense = formula({256, 128}, 0.9);
  const QuantConfig config{.type = QuantType::kNF4, .blocksize = 64, .double_quant = true};
  for (int world : {2, 4}) {
    CpuAllocationCounter counter;
    auto whole = std::make_unique<QuantizedLinearSlot>(quantize(dense, config), at::Tensor());
    const int64_t whole_bytes = counter.current();
    // Fills the weight's decoded-absmax cache, which the shard must not keep alive.
    whole->weight().dequantize(at::kFloat);
    EXPECT_GE(whole_bytes, whole->weight().nbytes() - 4);  // nbytes() counts the float offset
    auto sharded = std::make_unique<ShardedQuantizedSlot>(
        *whole, std::make_shared<SilentComm>(world - 1, world), std::make_shared<ShardTraffic>());
    whole.reset();
    EXPECT_EQ(counter.current(), sharded->layout().shard_bytes()) << world;
    EXPECT_LE(counter.current() * world, whole_bytes + 16 * 6 + world) << world;
    sharded.reset();
    EXPECT_EQ(counter.current(), 0);
  }
}

TEST(ShardedQuantizedSlot, TheChainLearnsTheOrderThenPrefetchesTheNextProjection) {
  std::vector<std::string> failures(2);
  on_two_ranks([&](int rank, std::shared_ptr<ShardComm> comm) {
    const QuantConfig config{.type = QuantType::kNF4, .blocksize = 64, .double_quant = true};
    QuantizedLinearSlot wa(quantize(formula({32, 64}, 0.1), config), at::Tensor());
    QuantizedLinearSlot wb(quantize(formula({64, 32}, 0.2), config), at::Tensor());
    auto traffic = std::make_shared<ShardTraffic>();
    auto a = std::make_shared<ShardedQuantizedSlot>(wa, comm, traffic);
    auto b = std::make_shared<ShardedQuantizedSlot>(wb, comm, traffic);
    auto chain = std::make_shared<GatherChain>();
    a->join_chain(chain, 1);
    b->join_chain(chain, 1);
    std::string& fail = failures[rank];
    at::NoGradGuard no_grad;
    const at::Tensor x = formula({4, 64}, 0.5 + rank);
    const at::Tensor expected = wb.forward(wa.forward(x));
    // First pass: the order is not known yet, nothing is prefetched.
    if (!at::equal(b->forward(a->forward(x)), expected)) fail += "first pass differs; ";
    if (traffic->gathers() != 2 || traffic->peak_live_bytes() != b->layout().padded_bytes()) {
      fail += "first pass gathers; ";
    }
    for (int pass = 0; pass < 2; ++pass) {
      const at::Tensor h = a->forward(x);
      // a's weight is freed; b's gather is in flight or done, waiting for b.
      if (traffic->gathers() != 4 + 2 * pass) fail += "b was not prefetched; ";
      if (traffic->live_bytes() != b->layout().padded_bytes()) fail += "live after a; ";
      if (!at::equal(b->forward(h), expected)) fail += "output differs; ";
      if (traffic->gathers() != 4 + 2 * pass) fail += "b gathered again; ";
      if (traffic->live_bytes() != 0) fail += "live after b; ";
    }
  });
  EXPECT_EQ(failures[0], "");
  EXPECT_EQ(failures[1], "");
}

TEST(ShardedQuantizedSlot, TheChainCrossesLayersAndLearnsTheRecomputeOrderApart) {
  // Two "layers" of two projections. Without gradient mode they run a1 b1 a2 b2 (the forward
  // pass of checkpointed layers); with it a2 b2 a1 b1 (their recomputation, last layer first).
  std::vector<std::string> failures(2);
  on_two_ranks([&](int rank, std::shared_ptr<ShardComm> comm) {
    const QuantConfig config{.type = QuantType::kNF4, .blocksize = 64, .double_quant = true};
    auto traffic = std::make_shared<ShardTraffic>();
    auto chain = std::make_shared<GatherChain>();
    std::vector<std::shared_ptr<ShardedQuantizedSlot>> slots;
    for (int i = 0; i < 4; ++i) {
      QuantizedLinearSlot whole(quantize(formula({32, 32}, 0.1 * i), config), at::Tensor());
      slots.push_back(std::make_shared<ShardedQuantizedSlot>(whole, comm, traffic));
      slots.back()->join_chain(chain, 1);
    }
    std::string& fail = failures[rank];
    const at::Tensor x = formula({2, 32}, 0.5 + rank);
    auto run = [&](const std::vector<int>& order, int pass) {
      for (size_t k = 0; k < order.size(); ++k) {
        const int64_t before = traffic->gathers();
        slots[order[k]]->forward(x);
        // Once learned, a slot's own gather was started by its predecessor; the last one's
        // successor, when there is one, is in flight now.
        const int64_t expected = pass == 0 ? 1 : (k == 0 ? 2 : (k + 1 < order.size() ? 1 : 0));
        if (traffic->gathers() - before != expected) {
          fail += "pass " + std::to_string(pass) + " slot " + std::to_string(order[k]) + ": " +
                  std::to_string(traffic->gathers() - before) + " gathers; ";
        }
      }
      if (traffic->live_bytes() != 0) fail += "a prefetch was left unused; ";
    };
    for (int pass = 0; pass < 3; ++pass) {
      {
        at::NoGradGuard no_grad;
        run({0, 1, 2, 3}, pass);  // b1 -> a2 crosses the layer boundary
      }
      at::AutoGradMode grad_on(true);
      run({2, 3, 0, 1}, pass);  // b2 -> a1: the recompute's order, kept apart
    }
  });
  EXPECT_EQ(failures[0], "");
  EXPECT_EQ(failures[1], "");
}

TEST(ShardedBaseMemory, BoundsWhatRealWeightsAndLayoutsHold) {
  ModelConfig config;
  config.vocab_size = 384;
  config.hidden_size = 64;
  config.intermediate_size = 128;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 16;
  Recipe recipe;
  recipe.quantization.type = "nf4";
  recipe.quantization.double_quant = true;
  recipe.distributed.strategy = "shard";
  const QuantConfig quant{.type = QuantType::kNF4, .blocksize = 64, .double_quant = true};
  for (int64_t world : {2, 3, 8}) {
    int64_t whole = 0, shard = 0, largest = 0;
    for (const TensorSpec& spec : hf_tensor_specs(config)) {
      if (spec.shape.size() != 2 || spec.name.rfind("model.layers.", 0) != 0) continue;
      const QuantizedTensor w = quantize(formula(spec.shape, 0.4), quant);
      const FlatQuantizedLayout layout(w, static_cast<int>(world));
      whole += w.nbytes();
      shard += layout.shard_bytes();
      largest = std::max(largest, layout.padded_bytes());
    }
    MemoryEstimate estimate;
    estimate.base_weights = 100000;
    estimate.total = 500000;
    const ShardedBaseMemory m = sharded_base_memory(recipe, config, estimate, world);
    EXPECT_EQ(m.sharded_whole, whole);
    EXPECT_GE(m.shard, shard) << world;
    EXPECT_LE(m.shard, shard + 14 * 80 / world + 14) << world;
    EXPECT_GE(m.gathered, 2 * largest - 2 * world);  // the two largest (prefetch 1)
    EXPECT_EQ(m.base_per_rank, 100000 - whole + m.shard + m.gathered);
    EXPECT_EQ(m.total_per_rank, 500000 - 100000 + m.base_per_rank);
  }
  recipe.quantization.type = "int4";
  MemoryEstimate estimate;
  EXPECT_THROW(sharded_base_memory(recipe, config, estimate, 2), Error);
}

TEST(ShardedBaseMemory, The70bFsdpRecipeFitsPerRank) {
  const Recipe recipe =
      load_recipe(testing::source_dir() + "/recipes/llama70b_qlora_fsdp.yaml", {});
  ASSERT_EQ(recipe.distributed.strategy, "shard");
  const MemoryPlan plan = plan_memory(recipe, std::nullopt);
  const ModelConfig config = recipe_model_config(recipe);
  constexpr int64_t kGiB = int64_t{1} << 30;
  for (const auto& [ranks, budget] : {std::pair{4, 24}, std::pair{2, 40}}) {
    const ShardedBaseMemory m = sharded_base_memory(recipe, config, plan.estimate, ranks);
    const int64_t needed = plan.needed - plan.estimate.total + m.total_per_rank;
    EXPECT_LE(needed, budget * kGiB) << ranks << " ranks";
    EXPECT_GT(plan.needed, budget * kGiB) << "the whole base alone would fit; the test says little";
    EXPECT_LT(m.base_per_rank, m.base_whole / ranks + 3 * kGiB);
  }
}

}  // namespace
}  // namespace qtrain

// Streamed loading of a sharded base (models/sharded_load.h) over a real two-rank Gloo group
// (threads of this process):
//  - a shard layout survives its integer encoding (what travels to ranks that never saw the
//    weight); damaged encodings are refused;
//  - every deferred weight is produced once, by its owner only (round-robin), and each rank's
//    shard gathers back to exactly that weight;
//  - measured by the CPU allocator, loading holds the shards plus one whole weight per rank, not
//    the whole base;
//  - the three loaders that stream into it (an HF checkpoint quantized on load, a bitsandbytes
//    4-bit directory as stored, a synthetic base) give each decoder projection bit for bit the
//    weight the unsharded load gives.
#include "core/error.h"
#include "models/bnb_4bit_save.h"
#include "models/llama.h"
#include "models/quantized_linear_slot.h"
#include "models/quantized_loader.h"
#include "models/sharded_load.h"
#include "models/synthetic_model.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"
#include "tests/trainer/two_rank_gloo.h"
#include "trainer/cpu_allocation_counter.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <string>
#include <vector>

namespace qtrain {
namespace {
using testing::on_two_ranks;

at::Tensor formula(std::vector<int64_t> shape, double phase) {
  const int64_t n = c10::multiply_integers(shape);
  return (at::arange(n, at::kFloat) * 0.731 + phase).sin().reshape(shape);
}

bool same_weight(const QuantizedTensor& a, const QuantizedTensor& b) {
  return a.shape == b.shape && at::equal(a.dequantize(at::kFloat), b.dequantize(at::kFloat));
}

TEST(FlatQuantizedLayout, SurvivesItsEncodingAndRefusesDamagedOnes) {
  for (const QuantConfig& config :
       {QuantConfig{QuantType::kNF4, 64, true}, QuantConfig{QuantType::kFP4, 128, false},
        QuantConfig{QuantType::kInt8, 256, false}}) {
    const QuantizedTensor w = quantize(formula({40, 96}, 0.2), config);
    for (int world : {1, 2, 3}) {
      const FlatQuantizedLayout layout(w, world);
      const std::vector<int64_t> encoded = layout.encode();
      const FlatQuantizedLayout decoded = FlatQuantizedLayout::decode(encoded);
      EXPECT_EQ(decoded.encode(), encoded);
      EXPECT_EQ(decoded.padded_bytes(), layout.padded_bytes());
      EXPECT_EQ(decoded.shape(), w.shape);
      // The nested offset, a float outside the flat bytes, travels too.
      EXPECT_TRUE(same_weight(decoded.unflatten(layout.flatten(w)), w))
          << quant_type_name(config.type) << " world " << world;

      std::vector<int64_t> truncated(encoded.begin(), encoded.end() - 1);
      EXPECT_THROW(FlatQuantizedLayout::decode(truncated), Error);
      std::vector<int64_t> longer = encoded;
      longer.push_back(0);
      EXPECT_THROW(FlatQuantizedLayout::decode(longer), Error);
      std::vector<int64_t> magic = encoded;
      magic[0] += 1;
      EXPECT_THROW(FlatQuantizedLayout::decode(magic), Error);
    }
  }
}

TEST(ShardedLoad, EachWeightIsMadeOnceByItsOwnerAndHeldInShards) {
  const QuantConfig config{.type = QuantType::kNF4, .blocksize = 64, .double_quant = true};
  // Five weights (the last round has one), allocated before any counter: a producer's copy is
  // what a read from the checkpoint would allocate.
  std::vector<QuantizedTensor> weights;
  for (int i = 0; i < 5; ++i) weights.push_back(quantize(formula({128, 256}, 0.1 * i), config));
  int64_t whole = 0;
  for (const auto& w : weights) whole += w.nbytes();
  std::vector<std::atomic<int>> made_by(weights.size());
  for (auto& m : made_by) m = -1;
  std::vector<std::string> failures(2);
  std::vector<ShardedLoad::Stats> stats(2);
  std::atomic<int64_t> peak = 0;
  {
    CpuAllocationCounter counter;  // both ranks' allocations
    on_two_ranks([&](int rank, std::shared_ptr<ShardComm> comm) {
      at::Tensor token = at::zeros({1});
      ShardedLoad load(comm, std::make_shared<ShardTraffic>(), c10::kCPU);
      std::vector<std::shared_ptr<ShardedQuantizedSlot>> slots;
      for (size_t i = 0; i < weights.size(); ++i) {
        if (load.owns_next() != (static_cast<int>(i % 2) == rank)) failures[rank] += "owner; ";
        slots.push_back(load.defer("model.layers.0.p" + std::to_string(i), 256, 128, at::Tensor(),
                                   [&, i, rank] {
                                     if (made_by[i].exchange(rank) != -1)
                                       failures[rank] += "twice; ";
                                     QuantizedTensor copy = weights[i];
                                     copy.data = copy.data.clone();
                                     copy.nested->codes = copy.nested->codes.clone();
                                     return copy;
                                   }));
      }
      load.finish();
      comm->broadcast(token, 0);  // both ranks are done loading
      if (rank == 0) peak = counter.peak();
      comm->broadcast(token, 0);
      stats[rank] = load.stats();
      for (size_t i = 0; i < slots.size(); ++i) {
        if (slots[i]->shard().numel() * 2 != slots[i]->layout().padded_bytes()) {
          failures[rank] += "not half; ";
        }
        if (!same_weight(slots[i]->gather_weight(), weights[i])) failures[rank] += "differs; ";
      }
    });
  }
  EXPECT_EQ(failures[0], "");
  EXPECT_EQ(failures[1], "");
  for (size_t i = 0; i < weights.size(); ++i) EXPECT_EQ(made_by[i], static_cast<int>(i % 2)) << i;
  EXPECT_EQ(stats[0].produced, 3);
  EXPECT_EQ(stats[1].produced, 2);
  EXPECT_EQ(stats[0].produced_bytes + stats[1].produced_bytes, whole);
  EXPECT_EQ(stats[0].projections, 5);
  // Measured: both ranks' shards (the whole base once, padded) plus, per rank, one weight's copy
  // and its flat bytes at a time - not the two whole bases an unsharded load would hold.
  const int64_t one = weights[0].nbytes() + 16 * 6;
  EXPECT_LE(peak, whole + 5 * 16 * 6 + 2 * 2 * one + 4096);
  EXPECT_LT(peak, 2 * whole);
  for (int r = 0; r < 2; ++r) {
    EXPECT_GE(stats[r].peak_held_bytes, stats[r].shard_bytes);
    EXPECT_LE(stats[r].peak_held_bytes, stats[r].shard_bytes + one);
  }
}

// Every decoder projection of `model`: the sharded slot's gathered weight (a collective, in the
// same order on both ranks), or the unsharded slot's weight.
std::map<std::string, QuantizedTensor> decoder_weights(CausalLM& model) {
  std::map<std::string, QuantizedTensor> out;
  for (const auto& [name, slot] : model.named_linears()) {
    if (!ShardedLoad::shards(name)) continue;
    if (auto s = std::dynamic_pointer_cast<ShardedQuantizedSlot>(slot)) {
      out[name] = s->gather_weight();
    } else if (auto q = std::dynamic_pointer_cast<QuantizedLinearSlot>(slot)) {
      out[name] = q->weight();
    }
  }
  return out;
}

void expect_sharded_equals_whole(const std::function<std::shared_ptr<CausalLM>(ShardedLoad*)>& load,
                                 const std::string& what) {
  const std::shared_ptr<CausalLM> whole_model = load(nullptr);
  const auto expected = decoder_weights(*whole_model);
  ASSERT_FALSE(expected.empty()) << what;
  std::vector<std::string> failures(2);
  on_two_ranks([&](int rank, std::shared_ptr<ShardComm> comm) {
    ShardedLoad sharded(comm, std::make_shared<ShardTraffic>(), c10::kCPU);
    const std::shared_ptr<CausalLM> model = load(&sharded);
    if (sharded.stats().produced * 2 != static_cast<int64_t>(expected.size())) {
      failures[rank] += "did not make half the weights; ";
    }
    const auto got = decoder_weights(*model);
    if (got.size() != expected.size()) failures[rank] += "projection count; ";
    for (const auto& [name, w] : got) {
      if (!same_weight(w, expected.at(name))) failures[rank] += name + " differs; ";
    }
    if (!at::equal(model->model->embed_tokens, whole_model->model->embed_tokens)) {
      failures[rank] += "embeddings differ; ";
    }
  });
  EXPECT_EQ(failures[0], "") << what;
  EXPECT_EQ(failures[1], "") << what;
}

TEST(ShardedLoad, EveryLoaderGivesTheUnshardedWeights) {
  testing::ScratchDir dir("qtrain-sharded-load");
  const std::string hf = dir.file("hf"), bnb = dir.file("bnb");
  write_tiny_model({.arch = "qwen2", .preset = "micro", .seed = 3}, hf);  // qkv biases
  const QuantConfig nf4{.type = QuantType::kNF4, .blocksize = 64, .double_quant = true};
  save_bnb_4bit_checkpoint(hf, bnb, {.type = QuantType::kFP4, .blocksize = 128}, at::kFloat);

  expect_sharded_equals_whole(
      [&](ShardedLoad* sharded) {
        QuantizedLoadOptions options;
        options.dtype = at::kFloat;
        options.quant = nf4;
        options.sharded = sharded;
        return load_quantized_causal_lm(hf, options);
      },
      "quantized on load");
  expect_sharded_equals_whole(
      [&](ShardedLoad* sharded) {
        QuantizedLoadOptions options;
        options.dtype = at::kFloat;
        options.quant = nf4;  // the directory's own fp4 wins
        options.sharded = sharded;
        return load_quantized_causal_lm(bnb, options);
      },
      "bitsandbytes 4-bit directory");
  expect_sharded_equals_whole(
      [&](ShardedLoad* sharded) {
        SyntheticModelOptions options;
        options.dtype = at::kFloat;
        options.quant = QuantConfig{.type = QuantType::kInt8, .blocksize = 64};
        options.seed = 5;
        options.sharded = sharded;
        return make_synthetic_causal_lm(tiny_model_config("llama", "micro"), options);
      },
      "synthetic");
}

}  // namespace
}  // namespace qtrain

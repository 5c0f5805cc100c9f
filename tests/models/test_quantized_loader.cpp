// Quantize-on-load: the quantized model computes what a dense model with the dequantized weights
// computes, skip lists keep modules dense, bad checkpoints name the tensor, and streaming keeps
// resident memory near one shard plus the quantized model.
#include "core/error.h"
#include "formats/bnb/bnb_checkpoint.h"
#include "formats/safetensors/safetensors.h"
#include "models/bnb_4bit_save.h"
#include "models/hf_loader.h"
#include "models/int4_loader.h"
#include "models/quantized_linear_slot.h"
#include "models/quantized_loader.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <dirent.h>
#include <sys/stat.h>
#include <cmath>
#include <fstream>
#include <functional>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

at::Tensor ids() {
  return at::tensor({1, 40, 7, 99, 12, 300, 5, 64}, at::kLong).view({1, -1});
}

TEST(QuantizedLoaderTest, EqualsDenseModelWithDequantizedWeights) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("m");
  write_tiny_model({.arch = "qwen2", .preset = "micro", .seed = 4}, dir);  // tied, qkv biases
  QuantizedLoadOptions options{.dtype = at::kFloat, .quant = {QuantType::kNF4, 64, true}};
  auto quantized = load_quantized_causal_lm(dir, options);
  auto dense = load_causal_lm(dir);
  torch::NoGradGuard no_grad;
  int quantized_slots = 0;
  auto dense_slots = dense->named_linears();
  for (const auto& [name, slot] : quantized->named_linears()) {
    auto q = std::dynamic_pointer_cast<QuantizedLinearSlot>(slot);
    if (!q) continue;
    ++quantized_slots;
    for (const auto& [dense_name, dense_slot] : dense_slots) {
      if (dense_name != name) continue;
      auto d = std::dynamic_pointer_cast<DenseLinear>(dense_slot);
      d->weight().copy_(q->weight().dequantize(at::kFloat));
      if (d->bias().defined()) EXPECT_TRUE(at::equal(d->bias(), q->bias())) << name;
    }
  }
  const ModelConfig& c = quantized->config();
  EXPECT_EQ(quantized_slots, 7 * c.num_hidden_layers);  // every projection; lm_head is tied
  at::Tensor a = quantized->forward({.input_ids = ids()});
  at::Tensor b = dense->forward({.input_ids = ids()});
  EXPECT_LT(t::max_abs_diff(a, b), 1e-5);
}

TEST(QuantizedLoaderTest, SkipListKeepsModulesDense) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("m");
  write_tiny_model({.arch = "llama", .preset = "micro", .seed = 1}, dir);
  QuantizedLoadOptions options{.dtype = at::kBFloat16};
  options.skip_modules = {"lm_head", "mlp.down_proj", "model.layers.0.self_attn.q_proj"};
  auto model = load_quantized_causal_lm(dir, options);
  for (const auto& [name, slot] : model->named_linears()) {
    const bool dense = std::dynamic_pointer_cast<DenseLinear>(slot) != nullptr;
    const bool expect_dense = name == "lm_head" || name.find("down_proj") != std::string::npos ||
                              name == "model.layers.0.self_attn.q_proj";
    EXPECT_EQ(dense, expect_dense) << name;
  }
  // Dense slots and norms carry the compute dtype; no parameter is a projection weight.
  for (const auto& p : model->named_parameters(true)) {
    EXPECT_EQ(p.value().scalar_type(), at::kBFloat16) << p.key();
  }
  EXPECT_TRUE(is_skipped_module("model.layers.3.mlp.down_proj", {"down_proj"}));
  EXPECT_FALSE(is_skipped_module("model.layers.3.mlp.down_proj", {"n_proj"}));
}

TEST(QuantizedLoaderTest, MisShapedOrMissingWeightIsNamed) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("m");
  write_tiny_model({.arch = "llama", .preset = "micro"}, dir);
  // Rewrite the checkpoint with one projection transposed.
  CheckpointReader reader = CheckpointReader::open_dir(dir);
  NamedTensors tensors;
  for (const auto& name : reader.names()) {
    at::Tensor tensor = reader.tensor(name).clone();
    if (name == "model.layers.1.mlp.up_proj.weight") tensor = tensor.t().contiguous();
    tensors.emplace_back(name, tensor);
  }
  write_checkpoint(dir, tensors);
  try {
    load_quantized_causal_lm(dir, {});
    FAIL() << "expected a shape error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kShape);
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos)
        << e.what();
  }
}

// Rewrites the checkpoint of `dir` after `edit` changed its tensors.
void edit_checkpoint(const std::string& dir, const std::function<void(NamedTensors&)>& edit) {
  NamedTensors tensors;
  {
    CheckpointReader reader = CheckpointReader::open_dir(dir);
    for (const auto& name : reader.names()) tensors.emplace_back(name, reader.tensor(name).clone());
  }
  edit(tensors);
  write_checkpoint(dir, tensors);
}

template <class Load>
Error load_error(const Load& load) {
  try {
    load();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected the load to fail";
  return Error(ErrorKind::kInternal, "none");
}

// Issue 24: a NaN in a projection weight is reported, naming it, before it is quantized (NF4 and
// INT4 would keep it as a NaN block scale; training would then diverge and blame the data).
TEST(QuantizedLoaderTest, NonFiniteProjectionIsAFormatErrorNamingIt) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("m");
  const std::string target = "model.layers.1.mlp.down_proj.weight";
  write_tiny_model({.arch = "llama", .preset = "micro"}, dir);
  edit_checkpoint(dir, [&](NamedTensors& tensors) {
    for (auto& [name, tensor] : tensors)
      if (name == target) tensor[3][5] = std::nan("");
  });
  for (const Error& e : {load_error([&] { load_quantized_causal_lm(dir, {}); }),
                         load_error([&] { load_int4_causal_lm(dir, {}); })}) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat) << e.what();
    EXPECT_EQ(e.context().tensor, target) << e.what();
  }
}

// Only the tensors allocated in full are compared before the model is made; an absurd
// hidden_size reaches the embeddings first and is refused there, not by the allocator.
TEST(QuantizedLoaderTest, AbsurdConfigSizeIsAShapeErrorBeforeAllocation) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("m");
  write_tiny_model({.arch = "llama", .preset = "micro"}, dir);
  ModelConfig config = ModelConfig::from_file(dir + "/config.json");
  config.hidden_size = 1'000'000'000;
  t::write_file(dir + "/config.json", config.to_json().dump());
  for (const Error& e : {load_error([&] { load_quantized_causal_lm(dir, {}); }),
                         load_error([&] { load_int4_causal_lm(dir, {}); })}) {
    EXPECT_EQ(e.kind(), ErrorKind::kShape) << e.what();
    EXPECT_EQ(e.context().tensor, "model.embed_tokens.weight") << e.what();
  }
}

TEST(QuantizedLoaderTest, PrequantizedDirectoryLoadsWithoutRequantizing) {
  t::ScratchDir scratch;
  const std::string dense_dir = scratch.file("dense"), bnb_dir = scratch.file("bnb");
  write_tiny_model({.arch = "qwen3", .preset = "micro", .seed = 9}, dense_dir);
  const QuantConfig quant{QuantType::kFP4, 64, true};
  save_bnb_4bit_checkpoint(dense_dir, bnb_dir, quant, at::kFloat);
  auto from_dense = load_quantized_causal_lm(dense_dir, {.dtype = at::kFloat, .quant = quant});
  // options.quant says NF4: the file's FP4 state must win.
  auto from_bnb = load_quantized_causal_lm(bnb_dir, {.dtype = at::kFloat});
  auto expected = from_dense->named_linears();
  size_t compared = 0;
  for (const auto& [name, slot] : from_bnb->named_linears()) {
    auto q = std::dynamic_pointer_cast<QuantizedLinearSlot>(slot);
    if (!q) continue;
    for (const auto& [other_name, other] : expected) {
      if (other_name != name) continue;
      const auto& a = q->weight();
      const auto& b = std::dynamic_pointer_cast<QuantizedLinearSlot>(other)->weight();
      EXPECT_EQ(a.type, QuantType::kFP4) << name;
      EXPECT_TRUE(at::equal(a.data, b.data)) << name;
      EXPECT_TRUE(at::equal(a.block_absmax(), b.block_absmax())) << name;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 7u * from_bnb->config().num_hidden_layers);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(from_bnb->forward({.input_ids = ids()}),
                        from_dense->forward({.input_ids = ids()})));
}

int64_t status_kib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return -1;
}

int64_t largest_file(const std::string& dir, const std::string& suffix) {
  int64_t largest = 0;
  DIR* d = opendir(dir.c_str());
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.size() < suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix))
      continue;
    struct stat st;
    if (stat((dir + "/" + name).c_str(), &st) == 0)
      largest = std::max<int64_t>(largest, st.st_size);
  }
  closedir(d);
  return largest;
}

TEST(QuantizedLoaderTest, StreamingKeepsResidentMemoryNearOneShard) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("m");
  // ~100M parameters, 408 MB in float32, in shards of at most 32 MB.
  write_tiny_model({.arch = "llama", .preset = "100m", .max_shard_bytes = 32u << 20}, dir);
  const int64_t shard = largest_file(dir, ".safetensors");
  int64_t checkpoint_bytes = 0;
  CheckpointReader probe = CheckpointReader::open_dir(dir);
  for (const auto& name : probe.names()) {
    checkpoint_bytes += probe.info(name).end - probe.info(name).begin;
  }
  ASSERT_GT(checkpoint_bytes, 8 * shard);

  // Reset the peak (VmHWM) to the current resident size, then load.
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  const int64_t before = status_kib("VmRSS") * 1024;
  QuantizedLoadOptions options{.dtype = at::kFloat, .quant = {QuantType::kNF4, 64, true}};
  auto model = load_quantized_causal_lm(dir, options);
  const int64_t peak = status_kib("VmHWM") * 1024 - before;

  int64_t quantized = 0, dense = 0;
  for (const auto& [name, slot] : model->named_linears()) {
    if (auto q = std::dynamic_pointer_cast<QuantizedLinearSlot>(slot))
      quantized += q->weight().nbytes();
  }
  for (const auto& p : model->named_parameters(true)) dense += p.value().nbytes();
  const int64_t model_bytes = quantized + dense;
  const int64_t slack = 48 << 20;
  std::cout << "checkpoint " << (checkpoint_bytes >> 20) << " MiB, largest shard " << (shard >> 20)
            << " MiB, quantized model " << (model_bytes >> 20) << " MiB, peak resident growth "
            << (peak >> 20) << " MiB\n";
  EXPECT_LT(peak, shard + model_bytes + slack);
  EXPECT_LT(peak, checkpoint_bytes / 2);
}

}  // namespace
}  // namespace qtrain

// The loader names every tensor it cannot use: missing, unexpected or mis-shaped, and loads
// sharded and single-file checkpoints to the same model.
#include "core/error.h"
#include "formats/safetensors/safetensors.h"
#include "models/hf_loader.h"
#include "tests/models/random_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

NamedTensors checkpoint_tensors(const CausalLM& model) {
  NamedTensors out;
  for (const auto& item : model.named_parameters(true)) {
    if (model.config().tie_word_embeddings && item.key() == "lm_head.weight") continue;
    out.emplace_back(item.key(), item.value().detach().clone());
  }
  return out;
}

void write_dir(const std::string& dir, const ModelConfig& config, const NamedTensors& tensors,
               uint64_t max_shard_bytes = 5'000'000'000ULL) {
  std::filesystem::create_directories(dir);
  t::write_file(dir + "/config.json", config.to_json().dump());
  ShardOptions options;
  options.max_shard_bytes = max_shard_bytes;
  write_checkpoint(dir, tensors, options);
}

Error load_error(const std::string& dir) {
  try {
    load_causal_lm(dir);
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected " << dir << " to fail to load";
  return Error(ErrorKind::kInternal, "none");
}

TEST(HfLoaderTest, ShardedAndSingleFileLoadTheSameWeights) {
  t::ScratchDir scratch;
  ModelConfig config = t::small_config("llama");
  auto model = t::random_model(config, 21);
  write_dir(scratch.file("one"), config, checkpoint_tensors(*model));
  write_dir(scratch.file("many"), config, checkpoint_tensors(*model), 10000);
  ASSERT_TRUE(std::filesystem::exists(scratch.file("many/model.safetensors.index.json")));
  auto a = load_causal_lm(scratch.file("one"));
  auto b = load_causal_lm(scratch.file("many"), {.dtype = at::kBFloat16});
  auto original = model->named_parameters(true);
  auto pb = b->named_parameters(true);
  for (const auto& item : a->named_parameters(true)) {
    EXPECT_TRUE(at::equal(item.value(), original[item.key()])) << item.key();
    EXPECT_EQ(pb[item.key()].scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::equal(pb[item.key()], original[item.key()].to(at::kBFloat16))) << item.key();
  }
}

TEST(HfLoaderTest, TiedEmbeddingsShareOneTensor) {
  t::ScratchDir scratch;
  ModelConfig config = t::small_config("qwen2");
  ASSERT_TRUE(config.tie_word_embeddings);
  write_dir(scratch.path(), config, checkpoint_tensors(*t::random_model(config, 2)));
  auto model = load_causal_lm(scratch.path());
  auto params = model->named_parameters(true);
  EXPECT_EQ(params["lm_head.weight"].data_ptr(), params["model.embed_tokens.weight"].data_ptr());
}

TEST(HfLoaderTest, MissingTensorIsNamed) {
  t::ScratchDir scratch;
  ModelConfig config = t::small_config("llama");
  NamedTensors tensors = checkpoint_tensors(*t::random_model(config, 1));
  tensors.erase(tensors.begin() + 3);
  const std::string dropped = checkpoint_tensors(*t::random_model(config, 1))[3].first;
  write_dir(scratch.path(), config, tensors);
  Error e = load_error(scratch.path());
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_NE(std::string(e.what()).find(dropped), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
}

TEST(HfLoaderTest, UnexpectedTensorIsNamed) {
  t::ScratchDir scratch;
  ModelConfig config = t::small_config("llama");
  NamedTensors tensors = checkpoint_tensors(*t::random_model(config, 1));
  tensors.emplace_back("model.layers.0.self_attn.q_proj.lora_A.weight", at::zeros({2, 32}));
  tensors.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", at::zeros({4}));  // ignored
  write_dir(scratch.path(), config, tensors);
  Error e = load_error(scratch.path());
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_NE(std::string(e.what()).find("lora_A"), std::string::npos) << e.what();
  EXPECT_EQ(std::string(e.what()).find("inv_freq"), std::string::npos) << e.what();
}

TEST(HfLoaderTest, MisShapedTensorIsNamedWithBothShapes) {
  t::ScratchDir scratch;
  ModelConfig config = t::small_config("llama");
  NamedTensors tensors = checkpoint_tensors(*t::random_model(config, 1));
  for (auto& [name, tensor] : tensors) {
    if (name == "model.layers.1.mlp.down_proj.weight") tensor = at::zeros({32, 47});
  }
  write_dir(scratch.path(), config, tensors);
  Error e = load_error(scratch.path());
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  const std::string what = e.what();
  EXPECT_NE(what.find("model.layers.1.mlp.down_proj.weight"), std::string::npos) << what;
  EXPECT_NE(what.find("[32, 47]"), std::string::npos) << what;
  EXPECT_NE(what.find("[32, 48]"), std::string::npos) << what;
}

// Issue 24: config.json sizes that disagree with the weights used to reach the allocator first
// (hidden_size 1e9: 1.5 TB of embeddings, a LibTorch error naming nothing). They are compared with
// the safetensors headers before anything is allocated.
TEST(HfLoaderTest, AbsurdConfigSizeIsAShapeErrorBeforeAllocation) {
  t::ScratchDir scratch;
  ModelConfig config = t::small_config("llama");
  write_dir(scratch.path(), config, checkpoint_tensors(*t::random_model(config, 1)));
  config.hidden_size = 1'000'000'000;
  t::write_file(scratch.file("config.json"), config.to_json().dump());
  Error e = load_error(scratch.path());
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_EQ(e.context().tensor, "model.embed_tokens.weight");
  EXPECT_NE(std::string(e.what()).find("[97, 1000000000]"), std::string::npos) << e.what();
}

TEST(HfLoaderTest, ConfigWithMoreLayersThanTheWeightsListsTheMissingOnes) {
  t::ScratchDir scratch;
  ModelConfig config = t::small_config("llama");
  write_dir(scratch.path(), config, checkpoint_tensors(*t::random_model(config, 1)));
  config.num_hidden_layers = 4096;
  t::write_file(scratch.file("config.json"), config.to_json().dump());
  Error e = load_error(scratch.path());
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_EQ(e.context().tensor, "model.layers.2.self_attn.q_proj.weight");
  EXPECT_NE(std::string(e.what()).find("tensor(s) missing"), std::string::npos) << e.what();
}

// A NaN or Inf in a base weight would otherwise surface as a diverged loss, blamed on the data.
TEST(HfLoaderTest, NonFiniteWeightIsAFormatErrorNamingIt) {
  const std::pair<std::string, double> poisons[] = {{"model.norm.weight", std::nan("")},
                                                    {"lm_head.weight", -INFINITY}};
  for (const auto& [target, value] : poisons) {
    for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      SCOPED_TRACE(target + " " + c10::toString(dtype));
      t::ScratchDir scratch;
      ModelConfig config = t::small_config("llama");
      NamedTensors tensors = checkpoint_tensors(*t::random_model(config, 1));
      for (auto& [name, tensor] : tensors) {
        tensor = tensor.to(dtype);
        if (name == target) tensor.view({-1})[tensor.numel() - 1] = value;
      }
      write_dir(scratch.path(), config, tensors);
      Error e = load_error(scratch.path());
      EXPECT_EQ(e.kind(), ErrorKind::kFormat);
      EXPECT_EQ(e.context().tensor, target);
      EXPECT_NE(e.context().file.find("model.safetensors"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("NaN or Inf"), std::string::npos) << e.what();
    }
  }
}

TEST(HfLoaderTest, MissingFilesAreIoErrors) {
  t::ScratchDir scratch;
  EXPECT_EQ(load_error(scratch.path()).kind(), ErrorKind::kIo);  // no config.json
  t::write_file(scratch.file("config.json"), t::small_config().to_json().dump());
  Error e = load_error(scratch.path());  // no weights
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_NE(std::string(e.what()).find(scratch.path()), std::string::npos) << e.what();
  t::write_file(scratch.file("model.safetensors"), "garbage");
  EXPECT_EQ(load_error(scratch.path()).kind(), ErrorKind::kFormat);
}

}  // namespace
}  // namespace qtrain

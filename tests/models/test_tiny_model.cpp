// The tiny-model maker (models/tiny_model.h) and its CLI, tools/qtiny.
#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"
#include "formats/safetensors/safetensors.h"
#include "models/config.h"
#include "models/hf_names.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <set>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

int64_t parameter_count(const ModelConfig& config) {
  int64_t total = 0;
  for (const auto& spec : hf_tensor_specs(config)) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    total += n;
  }
  return total;
}

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

TinyModelOptions micro(const std::string& arch, uint64_t seed = 0) {
  TinyModelOptions options;
  options.arch = arch;
  options.preset = "micro";
  options.seed = seed;
  return options;
}

nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(testing::read_file(path));
}

// ---------------------------------------------------------------------------------------------
// Presets

TEST(TinyModelConfig, PresetsAreValidGqaModels) {
  for (const auto& arch : tiny_model_archs()) {
    for (const auto& preset : tiny_model_presets()) {
      SCOPED_TRACE(arch + " " + preset);
      const ModelConfig c = tiny_model_config(arch, preset);
      EXPECT_NO_THROW(c.validate());
      const bool gemma3 = arch == "gemma3";
      EXPECT_EQ(c.model_type, gemma3 ? "gemma3_text" : arch);
      EXPECT_LT(c.num_key_value_heads, c.num_attention_heads);
      const bool qwen = arch == "qwen2" || arch == "qwen3";
      EXPECT_EQ(c.tie_word_embeddings, qwen || arch == "gemma2" || gemma3);
      EXPECT_EQ(c.rope_theta, qwen || gemma3 ? 1e6 : 1e4);
      EXPECT_EQ(c.has_qkv_bias(), arch == "qwen2");
      EXPECT_EQ(c.qk_norm, arch == "qwen3" || gemma3);
      if (gemma3) {  // sliding layers with their own RoPE base between full ones
        EXPECT_EQ(c.local_rope_theta, 1e4);
        EXPECT_TRUE(c.layer_uses_local_rope(0));
        EXPECT_FALSE(c.layer_slides(1));
        EXPECT_FALSE(c.attn_logit_softcapping || c.final_logit_softcapping);
      }
      if (arch == "qwen3") {
        EXPECT_NE(c.head_dim, c.hidden_size / c.num_attention_heads);
      } else {
        EXPECT_EQ(c.head_dim, c.hidden_size / c.num_attention_heads);
      }
      EXPECT_EQ(c.bos_token_id, 1);
      EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
      EXPECT_EQ(c.max_position_embeddings, 2048);
      // to_json/from_json round trip keeps the architecture.
      const ModelConfig back = ModelConfig::from_json(c.to_json());
      EXPECT_EQ(back.head_dim, c.head_dim);
      EXPECT_EQ(back.tie_word_embeddings, c.tie_word_embeddings);
      EXPECT_EQ(back.sliding_window, c.sliding_window);
      EXPECT_EQ(back.layer_types, c.layer_types);
      EXPECT_EQ(back.local_rope_theta, c.local_rope_theta);
    }
  }
}

TEST(TinyModelConfig, PresetSizes) {
  const std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> bounds = {
      {"micro", {50'000, 300'000}},
      {"tiny", {1'000'000, 2'000'000}},
      {"small", {10'000'000, 20'000'000}},
      {"100m", {85'000'000, 120'000'000}},
  };
  for (const auto& arch : tiny_model_archs()) {
    for (const auto& [preset, range] : bounds) {
      const int64_t n = parameter_count(tiny_model_config(arch, preset));
      EXPECT_GE(n, range.first) << arch << " " << preset;
      EXPECT_LE(n, range.second) << arch << " " << preset;
    }
  }
}

TEST(TinyModelConfig, UnknownArchOrPresetIsNamed) {
  try {
    tiny_model_config("gpt2", "tiny");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("gpt2"), std::string::npos) << e.what();
  }
  try {
    tiny_model_config("llama", "huge");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("huge"), std::string::npos) << e.what();
  }
}

TEST(TinyModelConfig, OptionsOverrideThePreset) {
  TinyModelOptions options = micro("qwen3");
  options.num_hidden_layers = 1;
  options.num_attention_heads = 8;
  options.dtype = "bfloat16";
  const ModelConfig c = tiny_model_config(options);
  EXPECT_EQ(c.num_hidden_layers, 1);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.head_dim, 2 * 64 / 8);
  EXPECT_EQ(c.torch_dtype, "bfloat16");

  options.dtype = "int8";
  EXPECT_THROW(tiny_model_config(options), Error);
  options.dtype = "float32";
  options.num_key_value_heads = 3;  // does not divide 8 heads
  EXPECT_THROW(tiny_model_config(options), Error);
}

// ---------------------------------------------------------------------------------------------
// Writing

class TinyModelArch : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(TinyModelArch, WritesEveryTensorWithShapeAndDtype) {
  const auto& [arch, dtype] = GetParam();
  ScratchDir scratch;
  const std::string dir = scratch.file("model");
  TinyModelOptions options = micro(arch);
  options.dtype = dtype;
  write_tiny_model(options, dir);

  EXPECT_EQ(listing(dir),
            (std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors",
                                      "special_tokens_map.json", "tokenizer.json",
                                      "tokenizer.model", "tokenizer_config.json"}));
  const ModelConfig config = ModelConfig::from_file(dir + "/config.json");
  const ModelConfig expected = tiny_model_config(options);
  EXPECT_EQ(config.model_type, arch);
  EXPECT_EQ(config.torch_dtype, dtype);
  EXPECT_EQ(config.vocab_size, expected.vocab_size);
  EXPECT_EQ(config.head_dim, expected.head_dim);
  EXPECT_EQ(config.tie_word_embeddings, expected.tie_word_embeddings);

  const auto reader = CheckpointReader::open_dir(dir);
  const auto specs = hf_tensor_specs(config);
  EXPECT_EQ(reader.names().size(), specs.size());
  const at::ScalarType scalar_type = dtype == "float32"    ? at::kFloat
                                     : dtype == "bfloat16" ? at::kBFloat16
                                                           : at::kHalf;
  for (const auto& spec : specs) {
    SCOPED_TRACE(spec.name);
    ASSERT_TRUE(reader.contains(spec.name));
    EXPECT_EQ(reader.info(spec.name).shape, spec.shape);
    EXPECT_EQ(reader.info(spec.name).scalar_type, scalar_type);
    const at::Tensor t = reader.tensor(spec.name).to(at::kFloat);
    EXPECT_TRUE(at::isfinite(t).all().item<bool>());
    EXPECT_GT(t.std().item<double>(), 0.0) << "constant tensor";
  }
  // Norm weights are near one but not one, so a skipped or misapplied norm shows.
  const at::Tensor norm = reader.tensor("model.norm.weight").to(at::kFloat);
  EXPECT_NEAR(norm.mean().item<double>(), 1.0, 0.1);
  EXPECT_GT((norm - 1).abs().max().item<double>(), 0.05);
  // Linear weights have std ~ 1/sqrt(in_features).
  const at::Tensor q = reader.tensor("model.layers.0.self_attn.q_proj.weight").to(at::kFloat);
  EXPECT_NEAR(q.std().item<double>() * std::sqrt(double(config.hidden_size)), 1.0, 0.1);

  const auto tokenizer = SentencePieceTokenizer::load(dir + "/tokenizer.model");
  EXPECT_EQ(tokenizer.vocab_size(), config.vocab_size);
  const auto generation = read_json(dir + "/generation_config.json");
  EXPECT_EQ(generation["bos_token_id"], 1);
  EXPECT_EQ(generation["eos_token_id"], 2);
  EXPECT_EQ(generation["do_sample"], false);
}

INSTANTIATE_TEST_SUITE_P(
    Archs, TinyModelArch,
    ::testing::Values(std::make_pair("llama", "float32"), std::make_pair("mistral", "bfloat16"),
                      std::make_pair("qwen2", "float16"), std::make_pair("qwen3", "bfloat16")),
    [](const auto& info) { return info.param.first + "_" + info.param.second; });

TEST(TinyModel, SameSeedIsByteIdenticalOtherSeedDiffers) {
  ScratchDir scratch;
  write_tiny_model(micro("qwen2", 7), scratch.file("a"));
  write_tiny_model(micro("qwen2", 7), scratch.file("b"));
  write_tiny_model(micro("qwen2", 8), scratch.file("c"));
  for (const auto& name : listing(scratch.file("a"))) {
    SCOPED_TRACE(name);
    const std::string a = testing::read_file(scratch.file("a/" + name));
    EXPECT_EQ(a, testing::read_file(scratch.file("b/" + name)));
    if (name == "model.safetensors") {
      EXPECT_NE(a, testing::read_file(scratch.file("c/" + name)));
    } else {
      EXPECT_EQ(a, testing::read_file(scratch.file("c/" + name)));  // tokenizer: seed-free
    }
  }
}

TEST(TinyModel, DtypesShareTheUnderlyingValues) {
  ScratchDir scratch;
  TinyModelOptions options = micro("llama", 3);
  write_tiny_model(options, scratch.file("f32"));
  options.dtype = "bfloat16";
  write_tiny_model(options, scratch.file("bf16"));
  const auto f32 = CheckpointReader::open_dir(scratch.file("f32"));
  const auto bf16 = CheckpointReader::open_dir(scratch.file("bf16"));
  for (const auto& name : f32.names()) {
    EXPECT_TRUE(at::equal(f32.tensor(name).to(at::kBFloat16), bf16.tensor(name))) << name;
  }
}

TEST(TinyModel, WeightsArePinnedForSeedZero) {
  // The generator is mt19937 (at::CPUGeneratorImpl) and the transform is integer arithmetic, so
  // these hold on every machine; they change only when the initialization does, deliberately.
  ScratchDir scratch;
  write_tiny_model(micro("llama", 0), scratch.file("m"));
  const auto reader = CheckpointReader::open_dir(scratch.file("m"));
  const std::vector<std::pair<std::string, std::vector<float>>> expected = {
      {"model.embed_tokens.weight",
       {0.30359092354774475f, 0.3692922294139862f, 0.0335560217499733f, -0.13700184226036072f}},
      {"model.layers.0.self_attn.q_proj.weight",
       {0.11835238337516785f, -0.10391217470169067f, 0.1866721361875534f, 0.18447425961494446f}},
      {"model.norm.weight",
       {1.0620570182800293f, 0.9058288335800171f, 0.8861101269721985f, 1.1010491847991943f}},
      {"lm_head.weight",
       {0.06687081605195999f, 0.12827031314373016f, 0.02787202037870884f, 0.1023908406496048f}},
  };
  for (const auto& [name, values] : expected) {
    const at::Tensor t = reader.tensor(name).flatten();
    for (size_t i = 0; i < values.size(); ++i) {
      EXPECT_EQ(t[i].item<float>(), values[i]) << name << "[" << i << "]";
    }
  }
}

TEST(TinyModel, ShardedCheckpointHasAnIndex) {
  ScratchDir scratch;
  TinyModelOptions options = micro("llama", 1);
  write_tiny_model(options, scratch.file("single"));
  options.max_shard_bytes = 100'000;
  write_tiny_model(options, scratch.file("sharded"));

  const auto names = listing(scratch.file("sharded"));
  EXPECT_EQ(std::count(names.begin(), names.end(), "model.safetensors"), 0);
  ASSERT_EQ(std::count(names.begin(), names.end(), "model.safetensors.index.json"), 1);
  const auto index = read_json(scratch.file("sharded/model.safetensors.index.json"));
  std::set<std::string> shards;
  for (const auto& [tensor, file] : index["weight_map"].items()) shards.insert(file);
  EXPECT_GT(shards.size(), 2u);
  for (const auto& shard : shards) {
    EXPECT_TRUE(fs::exists(scratch.file("sharded/" + shard))) << shard;
    EXPECT_LE(fs::file_size(scratch.file("sharded/" + shard)), 100'000u + 16'384u);
  }

  const auto single = CheckpointReader::open_dir(scratch.file("single"));
  const auto sharded = CheckpointReader::open_dir(scratch.file("sharded"));
  ASSERT_EQ(single.names(), sharded.names());
  for (const auto& name : single.names()) {
    EXPECT_TRUE(at::equal(single.tensor(name), sharded.tensor(name))) << name;
  }
}

TEST(TinyModel, RefusesANonEmptyDirectoryUnlessOverwriting) {
  ScratchDir scratch;
  const std::string dir = scratch.file("model");
  fs::create_directory(dir);
  write_tiny_model(micro("llama"), dir);  // empty directory: fine
  testing::write_file(dir + "/extra.txt", "keep me?");
  try {
    write_tiny_model(micro("llama"), dir);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find(dir), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(dir + "/extra.txt"));

  TinyModelOptions options = micro("mistral");
  options.overwrite = true;
  write_tiny_model(options, dir);
  EXPECT_FALSE(fs::exists(dir + "/extra.txt"));
  EXPECT_EQ(ModelConfig::from_file(dir + "/config.json").model_type, "mistral");
  EXPECT_EQ(listing(scratch.path()), std::vector<std::string>{"model"});
}

TEST(TinyModel, FailureLeavesNothingBehind) {
  ScratchDir scratch;
  TinyModelOptions options = micro("llama");
  options.corpus = {scratch.file("missing.txt")};
  try {
    write_tiny_model(options, scratch.file("model"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(listing(scratch.path()).empty());
}

TEST(TinyModel, CustomCorpusShrinksTheVocabulary) {
  ScratchDir scratch;
  testing::write_file(scratch.file("corpus.txt"), "tiny corpus\nof a few words\n");
  TinyModelOptions options = micro("llama");
  options.corpus = {scratch.file("corpus.txt")};
  write_tiny_model(options, scratch.file("model"));
  const ModelConfig config = ModelConfig::from_file(scratch.file("model/config.json"));
  EXPECT_LT(config.vocab_size, 384);
  EXPECT_EQ(CheckpointReader::open_dir(scratch.file("model")).info("lm_head.weight").shape[0],
            config.vocab_size);
}

// ---------------------------------------------------------------------------------------------
// Interop with transformers / sentencepiece / tokenizers

TEST(TinyModelInterop, TransformersTokenizesLikeSentencePiece) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir scratch;
  TinyModelOptions options;
  options.arch = "llama";
  options.preset = "tiny";
  write_tiny_model(options, scratch.file("model"));
  std::string output;
  ASSERT_EQ(
      testing::run_reference_script("check_tiny_tokenizer.py", {scratch.file("model")}, &output), 0)
      << output;
  const auto result = nlohmann::json::parse(output.substr(output.find('{')));
  const auto tokenizer = SentencePieceTokenizer::load(scratch.file("model/tokenizer.model"));
  const auto config = read_json(scratch.file("model/tokenizer_config.json"));
  const bool add_bos = config["add_bos_token"];
  EXPECT_EQ(result["bos_token_id"], tokenizer.bos_id());
  EXPECT_EQ(result["eos_token_id"], tokenizer.eos_id());
  EXPECT_EQ(result["unk_token_id"], tokenizer.unk_id());
  EXPECT_TRUE(result["pad_token_id"].is_null());
  EXPECT_EQ(result["vocab_size"], tokenizer.vocab_size());
  ASSERT_GE(result["cases"].size(), 10u);
  for (const auto& c : result["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE(text);
    const auto ours = tokenizer.encode(text, add_bos);
    EXPECT_EQ(c["transformers"].get<std::vector<int64_t>>(), ours);
    EXPECT_EQ(c["tokenizers"].get<std::vector<int64_t>>(), ours);
    EXPECT_EQ(c["sentencepiece"].get<std::vector<int64_t>>(), tokenizer.encode(text));
    EXPECT_EQ(c["sentencepiece_decoded"].get<std::string>(), tokenizer.decode(ours));
    EXPECT_EQ(c["transformers_decoded"].get<std::string>(), tokenizer.decode(ours));
  }
}

TEST(TinyModelInterop, TransformersLoadsEveryArch) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir scratch;
  std::vector<std::string> dirs;
  for (const auto& arch : tiny_model_archs()) {
    dirs.push_back(scratch.file(arch));
    write_tiny_model(micro(arch), dirs.back());
  }
  std::string output;
  ASSERT_EQ(testing::run_reference_script("check_tiny_model_load.py", dirs, &output), 0) << output;
  const auto results = nlohmann::json::parse(output.substr(output.find("[{")));
  ASSERT_EQ(results.size(), dirs.size());
  const std::vector<std::string> classes = {
      "LlamaForCausalLM",  "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
      "Gemma2ForCausalLM", "Gemma3ForCausalLM",  "Phi3ForCausalLM"};
  for (size_t i = 0; i < dirs.size(); ++i) {
    const auto& result = results[i];
    SCOPED_TRACE(dirs[i]);
    const ModelConfig config = ModelConfig::from_file(dirs[i] + "/config.json");
    EXPECT_EQ(result["class"], classes[i]);
    EXPECT_TRUE(result["missing"].empty()) << result["missing"].dump();
    EXPECT_TRUE(result["unexpected"].empty()) << result["unexpected"].dump();
    EXPECT_TRUE(result["mismatched"].empty()) << result["mismatched"].dump();
    EXPECT_EQ(result["dtype"], "float32");
    // Tied embeddings count once in both.
    EXPECT_EQ(result["num_parameters"], parameter_count(config));
    EXPECT_TRUE(result["logits_finite"].get<bool>());
    // Logits are O(1): neither vanishing nor exploding through the layers.
    EXPECT_GT(result["logits_std"].get<double>(), 0.1);
    EXPECT_LT(result["logits_std"].get<double>(), 10.0);
  }
}

// ---------------------------------------------------------------------------------------------
// tools/qtiny

std::string qtiny() {
  return testing::binary_dir() + "/tools/qtiny";
}

TEST(QtinyCli, WritesAModel) {
  ScratchDir scratch;
  std::string output;
  const int rc = testing::run_command(
      qtiny() + " --arch qwen3 --preset micro --seed 5 --dtype bfloat16 --out " + scratch.file("m"),
      &output);
  ASSERT_EQ(rc, 0) << output;
  EXPECT_NE(output.find("qwen3"), std::string::npos) << output;
  const ModelConfig config = ModelConfig::from_file(scratch.file("m/config.json"));
  EXPECT_EQ(config.model_type, "qwen3");
  EXPECT_EQ(config.torch_dtype, "bfloat16");

  // The library with the same options writes the same bytes.
  TinyModelOptions options = micro("qwen3", 5);
  options.dtype = "bfloat16";
  write_tiny_model(options, scratch.file("lib"));
  for (const auto& name : listing(scratch.file("m"))) {
    EXPECT_EQ(testing::read_file(scratch.file("m/" + name)),
              testing::read_file(scratch.file("lib/" + name)))
        << name;
  }
}

struct BadCall {
  std::string args;
  int exit_code;
  std::vector<std::string> message_parts;
};

TEST(QtinyCli, BadArgumentsExitNonZeroWithAMessage) {
  ScratchDir scratch;
  fs::create_directory(scratch.file("full"));
  testing::write_file(scratch.file("full/file.txt"), "x");
  const std::string out = " --out " + scratch.file("m");
  const std::vector<BadCall> calls = {
      {"--arch gpt2" + out, 2, {"qtiny: ", "gpt2", "arch"}},
      {"--preset huge" + out, 2, {"qtiny: ", "huge", "preset"}},
      {"--dtype int4" + out, 2, {"qtiny: ", "int4", "dtype"}},
      {"--preset micro", 2, {"qtiny: ", "--out"}},
      {"--seed abc" + out, 2, {"qtiny: ", "abc"}},
      {"--bogus" + out, 2, {"qtiny: ", "--bogus"}},
      {"--preset micro --out " + scratch.file("full"),
       4,
       {"qtiny: ", scratch.file("full"), "not empty", "--overwrite"}},
  };
  for (const auto& call : calls) {
    SCOPED_TRACE(call.args);
    std::string output;
    EXPECT_EQ(testing::run_command(qtiny() + " " + call.args, &output), call.exit_code) << output;
    for (const auto& part : call.message_parts) {
      EXPECT_NE(output.find(part), std::string::npos) << "'" << part << "' not in: " << output;
    }
  }
  EXPECT_FALSE(fs::exists(scratch.file("m")));
  EXPECT_EQ(listing(scratch.file("full")), std::vector<std::string>{"file.txt"});
}

TEST(QtinyCli, HelpExitsZero) {
  std::string output;
  EXPECT_EQ(testing::run_command(qtiny() + " --help", &output), 0);
  EXPECT_NE(output.find("--preset"), std::string::npos) << output;
}

}  // namespace
}  // namespace qtrain

// Forward parity with transformers: random Llama / Mistral / Qwen2 / Qwen3 checkpoints written
// here, loaded by qtrain and by transformers (float32, CPU); logits must agree within 1e-4 and
// greedy continuations token for token.
#include "formats/safetensors/safetensors.h"
#include "models/generate.h"
#include "models/hf_loader.h"
#include "tests/models/random_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>

namespace qtrain {
namespace {

using nlohmann::json;
namespace t = qtrain::testing;

struct Variant {
  std::string label;
  ModelConfig config;
  uint64_t max_shard_bytes = 0;  // 0: one file
};

std::vector<Variant> variants() {
  std::vector<Variant> out;
  {
    Variant v{"llama_gqa", t::small_config("llama")};
    out.push_back(v);
  }
  {
    Variant v{"llama3_scaled_biased", t::small_config("llama")};
    v.config.rope_theta = 500000.0;
    v.config.rope_scaling = {.type = RopeType::kLlama3,
                             .factor = 8.0,
                             .low_freq_factor = 1.0,
                             .high_freq_factor = 4.0,
                             .original_max_position_embeddings = 64};
    v.config.attention_bias = true;
    v.config.mlp_bias = true;
    v.config.head_dim = 16;  // head_dim != hidden / heads
    v.max_shard_bytes = 20000;
    out.push_back(v);
  }
  {
    Variant v{"llama_linear_rope_mha", t::small_config("llama", 4)};
    v.config.rope_scaling = {.type = RopeType::kLinear, .factor = 2.0};
    out.push_back(v);
  }
  {
    Variant v{"mistral_window", t::small_config("mistral")};
    v.config.tie_word_embeddings = false;
    v.config.sliding_window = 5;
    out.push_back(v);
  }
  {
    Variant v{"qwen2_tied", t::small_config("qwen2")};
    v.config.rope_theta = 1e6;
    out.push_back(v);
  }
  {
    Variant v{"qwen3_tied_qknorm", t::small_config("qwen3")};
    v.config.rope_theta = 1e6;
    out.push_back(v);
  }
  return out;
}

void write_model_dir(const CausalLM& model, const std::string& dir, uint64_t max_shard_bytes) {
  std::filesystem::create_directories(dir);
  t::write_file(dir + "/config.json", model.config().to_json().dump(2));
  NamedTensors tensors;
  for (const auto& item : model.named_parameters(true)) {
    if (model.config().tie_word_embeddings && item.key() == "lm_head.weight") continue;
    tensors.emplace_back(item.key(), item.value().detach());
  }
  ShardOptions options;
  if (max_shard_bytes) options.max_shard_bytes = max_shard_bytes;
  write_checkpoint(dir, tensors, options);
}

TEST(HfParityTest, LogitsAndGreedyTokensMatchTransformers) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  const std::vector<std::vector<int64_t>> input_ids = {
      {1, 5, 17, 3, 88, 42, 7, 7, 60, 2, 95, 31}, {1, 90, 12, 12, 44, 0, 63, 8, 21, 77, 50, 9}};
  const std::vector<int64_t> prompt = {1, 33, 14, 15};
  const int64_t new_tokens = 8;
  t::ScratchDir scratch("qtrain-parity");
  t::write_file(
      scratch.file("inputs.json"),
      json{{"input_ids", input_ids}, {"generate_prompt", prompt}, {"max_new_tokens", new_tokens}}
          .dump());
  std::vector<std::string> dirs;
  for (const Variant& v : variants()) {
    auto model = t::random_model(v.config, 1234);
    dirs.push_back(scratch.file(v.label));
    write_model_dir(*model, dirs.back(), v.max_shard_bytes);
    if (v.max_shard_bytes) {
      ASSERT_TRUE(std::filesystem::exists(dirs.back() + "/model.safetensors.index.json"));
    }
  }
  std::vector<std::string> args = {scratch.file("inputs.json")};
  args.insert(args.end(), dirs.begin(), dirs.end());
  std::string output;
  ASSERT_EQ(t::run_reference_script("hf_logits.py", args, &output), 0) << output;

  at::Tensor ids = at::empty({2, 12}, at::kLong);
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t c = 0; c < 12; ++c) ids[r][c] = input_ids[r][c];
  for (size_t i = 0; i < dirs.size(); ++i) {
    SCOPED_TRACE(variants()[i].label);
    auto loaded = load_causal_lm(dirs[i]);
    at::Tensor ours;
    {
      torch::NoGradGuard no_grad;
      ours = loaded->forward({.input_ids = ids});
    }
    at::Tensor theirs =
        CheckpointReader::open_file(dirs[i] + "/ref_logits.safetensors").tensor("logits");
    ASSERT_EQ(ours.sizes(), theirs.sizes());
    const double diff = t::max_abs_diff(ours, theirs);
    EXPECT_LE(diff, 1e-4) << "max |logit difference|";
    std::cout << variants()[i].label << ": max |logit diff| vs transformers = " << diff << "\n";
    EXPECT_GT(theirs.abs().max().item<double>(), 0.1);  // a model that says something

    json reference = json::parse(t::read_file(dirs[i] + "/ref.json"));
    GenerateOptions greedy{.max_new_tokens = new_tokens};
    EXPECT_EQ(generate(*loaded, prompt, greedy),
              reference["generated"].get<std::vector<int64_t>>());
  }
}

}  // namespace
}  // namespace qtrain

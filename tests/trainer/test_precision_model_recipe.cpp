// A run's quantization section reaches the evaluation base (load_model_at_precision with
// precision_options_of): a run trained through the real qtrain binary with a quantized lm_head
// (quantization.skip_modules: []) is evaluated on its held-out split, as qeval --recipe does, with
// the final held-out loss qtrain reported; the default options (lm_head dense) give another loss.
// qeval --recipe on the run prints that same loss. The options themselves: skip_modules always,
// blocksize / double_quant / group_size only for the run's own type.
#include "data/tiny_instruct.h"
#include "data/tokenizer.h"
#include "models/int4_linear_slot.h"
#include "models/llama.h"
#include "models/model_dir.h"
#include "models/quantized_linear_slot.h"
#include "peft/peft_files.h"
#include "tests/support/test_support.h"
#include "trainer/evaluate.h"
#include "trainer/precision_model.h"
#include "trainer/recipe/recipe.h"
#include "trainer/training_data.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace qtrain {
namespace {

std::string cache_dir() {
  return testing::binary_dir() + "/test-cache";
}

// The held-out losses metrics.jsonl records: [step 0, last step].
std::vector<double> eval_losses(const std::string& run) {
  std::ifstream in(run + "/metrics.jsonl");
  std::vector<double> out;
  std::string line;
  while (std::getline(in, line)) {
    const auto m = nlohmann::json::parse(line);
    if (m.contains("eval_loss")) out.push_back(m["eval_loss"].get<double>());
  }
  return out;
}

TEST(PrecisionOptionsOf, TakesSkipModulesAlwaysAndTheRestForTheRunsOwnType) {
  QuantizationSection q;
  q.type = "fp4";
  q.blocksize = 128;
  q.double_quant = false;
  q.group_size = 128;
  q.skip_modules = {};
  const PrecisionOptions fp4 = precision_options_of(q, "fp4");
  EXPECT_TRUE(fp4.skip_modules.empty());
  EXPECT_EQ(fp4.blocksize, 128);
  EXPECT_FALSE(fp4.double_quant);
  EXPECT_EQ(fp4.int4_group_size, PrecisionOptions{}.int4_group_size);
  const PrecisionOptions nf4 = precision_options_of(q, "nf4");  // another type: the defaults
  EXPECT_TRUE(nf4.skip_modules.empty());
  EXPECT_EQ(nf4.blocksize, PrecisionOptions{}.blocksize);
  EXPECT_EQ(nf4.double_quant, PrecisionOptions{}.double_quant);
  q.type = "int4";
  EXPECT_EQ(precision_options_of(q, "int4").int4_group_size, 128);
  EXPECT_EQ(precision_options_of(q, "int8").blocksize, PrecisionOptions{}.blocksize);
}

TEST(PrecisionOptionsOf, TheRecipesBlocksizeAndSkipModulesReachTheLoader) {
  setenv("QTRAIN_CACHE_DIR", cache_dir().c_str(), 1);
  QuantizationSection q;
  q.type = "int8";
  q.blocksize = 256;
  q.double_quant = false;
  q.skip_modules = {"mlp.down_proj"};
  const std::string dir = resolve_model_dir("builtin:micro");
  const PrecisionModel m =
      load_model_at_precision(dir, "int8", at::kFloat, c10::kCPU, precision_options_of(q, "int8"));
  int64_t quantized = 0;
  for (const auto& [name, slot] : m.model->named_linears()) {
    auto q8 = std::dynamic_pointer_cast<QuantizedLinearSlot>(slot);
    const bool down = name.size() >= 9 && name.substr(name.size() - 9) == "down_proj";
    EXPECT_EQ(q8 == nullptr, down) << name;
    if (q8) {
      EXPECT_EQ(q8->weight().blocksize, 256) << name;
      ++quantized;
    }
  }
  EXPECT_TRUE(std::dynamic_pointer_cast<QuantizedLinearSlot>(m.model->lm_head));
  EXPECT_GT(quantized, 1);
}

class PrecisionModelOfARun : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    setenv("QTRAIN_CACHE_DIR", cache_dir().c_str(), 1);
    write_tiny_instruct_dataset(dir_.file("data.jsonl"), 48, 5);
    const bool int4 = GetParam() == "int4";
    testing::write_file(dir_.file("recipe.yaml"), R"(model:
  path: builtin:micro
  dtype: float32
  device: cpu
quantization:
  type: )" + GetParam() + R"(
  skip_modules: []
adapter:
  type: )" + (int4 ? "qalora" : "lora") + R"(
  r: 4
  dropout: 0.0
  dtype: float32
data:
  path: )" + dir_.file("data.jsonl") + R"(
  max_seq_len: 128
  eval_fraction: 0.25
training:
  micro_batch_size: 4
  max_steps: 3
  lr: 1.0e-2
  eval_every: 3
  loss_chunk_tokens: 16
  seed: 3
)");
  }

  testing::ScratchDir dir_{"qtrain-precision-model-recipe"};
};

// The held-out loss of `precision` built with `options` plus the run's adapter, as qeval --recipe
// computes it.
double held_out_loss(const Recipe& recipe, const std::string& run, const std::string& precision,
                     const PrecisionOptions& options, bool* lm_head_quantized) {
  const std::string dir = resolve_model_dir(recipe.model.path);
  const TrainingData split = load_training_data(recipe, dir);
  PrecisionModel m = load_model_at_precision(dir, precision, at::kFloat, c10::kCPU, options);
  *lm_head_quantized = std::dynamic_pointer_cast<QuantizedLinearSlot>(m.model->lm_head) ||
                       std::dynamic_pointer_cast<Int4LinearSlot>(m.model->lm_head);
  attach_peft_adapter(*m.model, load_peft_adapter(run + "/adapter"));
  return evaluate(*m.model, split.eval, recipe.training.micro_batch_size, recipe.data.max_seq_len,
                  padding_id(*split.tokenizer), /*max_batches=*/0, /*shard=*/0,
                  /*num_shards=*/1, recipe.training.loss_chunk_tokens)
      .loss;
}

TEST_P(PrecisionModelOfARun, AQuantizedHeadRunEvaluatesToItsFinalHeldOutLoss) {
  const std::string run = dir_.file("run");
  std::string out;
  ASSERT_EQ(
      testing::run_command("QTRAIN_CACHE_DIR=" + cache_dir() + " " + testing::binary_dir() +
                               "/tools/qtrain " + dir_.file("recipe.yaml") + " output.dir=" + run,
                           &out),
      0)
      << out;
  const std::vector<double> reported = eval_losses(run);
  ASSERT_EQ(reported.size(), 2u);
  const Recipe recipe = load_recipe(run + "/recipe.yaml");
  const std::string precision = GetParam();

  bool quantized_head = false;
  const double loss =
      held_out_loss(recipe, run, precision, precision_options_of(recipe.quantization, precision),
                    &quantized_head);
  EXPECT_TRUE(quantized_head);
  EXPECT_NEAR(loss, reported[1], 1e-5 * reported[1]);
  // The check can tell: lm_head kept dense (the defaults) is further off than the tolerance.
  PrecisionOptions dense_head;
  dense_head.int4_group_size = recipe.quantization.group_size;
  const double dense_loss = held_out_loss(recipe, run, precision, dense_head, &quantized_head);
  EXPECT_FALSE(quantized_head);
  EXPECT_GT(std::abs(dense_loss - reported[1]), 1e-4 * reported[1]);
}

TEST_P(PrecisionModelOfARun, QevalOfTheRunGivesItsFinalHeldOutLoss) {
  const std::string run = dir_.file("run");
  const std::string env = "QTRAIN_CACHE_DIR=" + cache_dir() + " ";
  std::string out;
  ASSERT_EQ(testing::run_command(env + testing::binary_dir() + "/tools/qtrain " +
                                     dir_.file("recipe.yaml") + " output.dir=" + run,
                                 &out),
            0)
      << out;
  const std::vector<double> reported = eval_losses(run);
  ASSERT_EQ(reported.size(), 2u);
  const std::string json = dir_.file("qeval.json");
  ASSERT_EQ(testing::run_command(env + testing::binary_dir() + "/tools/qeval --recipe " + run +
                                     "/recipe.yaml --adapter " + run + "/adapter --precision " +
                                     GetParam() + " --json " + json,
                                 &out),
            0)
      << out;
  std::ifstream in(json);
  const auto rows = nlohmann::json::parse(in)["rows"];
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_NEAR(rows[0]["mean_loss"].get<double>(), reported[1], 1e-5 * reported[1]) << out;
}

INSTANTIATE_TEST_SUITE_P(Types, PrecisionModelOfARun, ::testing::Values("nf4", "int4"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace qtrain

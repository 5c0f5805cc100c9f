// lm_head quantized (quantization.skip_modules without lm_head) through the real qtrain binary:
// the loader quantizes it like any projection, training runs the chunked loss through the
// quantized slot, and the held-out losses qtrain reports equal a full-logits forward through a
// dense copy holding the dequantized weights (before training: the base alone; after: with the
// run's adapter). The merged export of the base as trained (--base-weights trained) holds the
// dequantized lm_head, and qgen generates from the run.
#include "data/batcher.h"
#include "data/tiny_instruct.h"
#include "formats/safetensors/safetensors.h"
#include "models/int4_linear_slot.h"
#include "models/int4_loader.h"
#include "models/llama.h"
#include "models/model_dir.h"
#include "models/quantized_linear_slot.h"
#include "models/quantized_loader.h"
#include "peft/peft_files.h"
#include "tests/support/test_support.h"
#include "trainer/causal_lm_loss.h"
#include "trainer/recipe/recipe.h"
#include "trainer/training_data.h"
#include "trainer/training_model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace qtrain {
namespace {

std::string tool(const std::string& name) {
  return testing::binary_dir() + "/tools/" + name;
}
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

// The model's weights as a dense model would hold them: every quantized slot replaced by a
// DenseLinear of its dequantized weight (float32).
void dequantize_in_place(CausalLM& model) {
  torch::NoGradGuard no_grad;
  for (const auto& [name, slot] : model.named_linears()) {
    at::Tensor weight, bias;
    if (auto q = std::dynamic_pointer_cast<QuantizedLinearSlot>(slot)) {
      weight = q->weight().dequantize(at::kFloat);
      bias = q->bias();
    } else if (auto g = std::dynamic_pointer_cast<Int4LinearSlot>(slot)) {
      weight = g->weight().dequantize(at::kFloat);
      bias = g->bias();
    } else {
      continue;
    }
    auto dense = std::make_shared<DenseLinear>(weight.size(1), weight.size(0), bias.defined(),
                                               at::TensorOptions().dtype(at::kFloat));
    dense->weight().copy_(weight);
    if (bias.defined()) dense->bias().copy_(bias);
    model.replace_linear(name, dense);
  }
}

// Mean next-token loss over `examples` from full [B, T, V] logits (no chunking), in eval mode.
double full_logits_loss(CausalLM& model, const std::vector<Example>& examples, int64_t seq_len) {
  torch::NoGradGuard no_grad;
  model.eval();
  Batcher batcher(examples, {.micro_batch_size = 4,
                             .seq_len = seq_len,
                             .packing = false,
                             .seed = 0,
                             .shuffle = false,
                             .pad_id = 0});
  double sum = 0;
  int64_t tokens = 0;
  for (int64_t i = 0; i < batcher.batches_per_epoch(); ++i) {
    const Batch batch = batcher.next();
    const at::Tensor logits =
        model.forward({.input_ids = batch.input_ids, .position_ids = batch.position_ids});
    sum += causal_lm_loss_sum(logits.to(at::kFloat), batch.labels).item<double>();
    tokens += count_loss_tokens(batch.labels);
  }
  return sum / static_cast<double>(tokens);
}

// The base alone (no adapters), loaded as the recipe's quantization section says.
std::shared_ptr<CausalLM> load_base_as_recipe(const Recipe& recipe, const std::string& dir) {
  const auto& q = recipe.quantization;
  if (q.type == "int4") {
    return load_int4_causal_lm(
        dir, {.dtype = at::kFloat, .group_size = q.group_size, .skip_modules = q.skip_modules});
  }
  QuantizedLoadOptions options;
  options.dtype = at::kFloat;
  options.quant = {quant_type_from_name(q.type), q.blocksize, q.double_quant};
  options.skip_modules = q.skip_modules;
  return load_quantized_causal_lm(dir, options);
}

class QuantizedLmHeadCli : public ::testing::TestWithParam<std::string> {
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

  std::string run_qtrain(const std::string& run) {
    std::string out;
    const int code = testing::run_command("QTRAIN_CACHE_DIR=" + cache_dir() + " " + tool("qtrain") +
                                              " " + dir_.file("recipe.yaml") + " output.dir=" + run,
                                          &out);
    EXPECT_EQ(code, 0) << out;
    return out;
  }

  testing::ScratchDir dir_{"qtrain-quantized-lm-head"};
};

TEST_P(QuantizedLmHeadCli, TrainsThroughTheQuantizedHeadAndMatchesADequantizedCopy) {
  const std::string run = dir_.file("run");
  run_qtrain(run);
  const std::vector<double> reported = eval_losses(run);
  ASSERT_EQ(reported.size(), 2u);
  ASSERT_TRUE(std::isfinite(reported[0]) && std::isfinite(reported[1]));

  const Recipe recipe = load_recipe(run + "/recipe.yaml");
  const std::string model_dir = resolve_model_dir(recipe.model.path);
  const TrainingData data = load_training_data(recipe, model_dir);
  ASSERT_FALSE(data.eval.empty());

  // The base as qtrain trained it: lm_head is a quantized slot.
  const bool int4 = GetParam() == "int4";
  TrainingModel as_trained = build_training_model(recipe);
  if (int4) {
    EXPECT_TRUE(std::dynamic_pointer_cast<Int4LinearSlot>(as_trained.model->lm_head));
  } else {
    EXPECT_TRUE(std::dynamic_pointer_cast<QuantizedLinearSlot>(as_trained.model->lm_head));
  }
  // Fresh adapters add nothing (B = 0): the step-0 loss is the base's.
  std::shared_ptr<CausalLM> copy = load_base_as_recipe(recipe, model_dir);
  dequantize_in_place(*copy);
  EXPECT_TRUE(std::dynamic_pointer_cast<DenseLinear>(copy->lm_head));
  const double base_loss = full_logits_loss(*copy, data.eval, recipe.data.max_seq_len);
  EXPECT_NEAR(base_loss, reported[0], 1e-5 * reported[0]) << GetParam();
  // The check can tell: the same base with lm_head kept dense is further off than the tolerance.
  Recipe dense_head = recipe;
  dense_head.quantization.skip_modules = {"lm_head"};
  std::shared_ptr<CausalLM> dense_head_copy = load_base_as_recipe(dense_head, model_dir);
  dequantize_in_place(*dense_head_copy);
  EXPECT_GT(std::abs(full_logits_loss(*dense_head_copy, data.eval, recipe.data.max_seq_len) -
                     reported[0]),
            1e-4 * reported[0]);

  if (!int4) {
    // After training: the run's adapter on the dequantized base.
    attach_peft_adapter(*copy, load_peft_adapter(run + "/adapter"));
    const double trained_loss = full_logits_loss(*copy, data.eval, recipe.data.max_seq_len);
    EXPECT_NEAR(trained_loss, reported[1], 1e-5 * reported[1]) << GetParam();
    EXPECT_LT(reported[1], reported[0]);

    // The merged export of the base as trained holds the dequantized lm_head (fp16-rounded).
    std::string out;
    const std::string merged = dir_.file("merged");
    ASSERT_EQ(testing::run_command("QTRAIN_CACHE_DIR=" + cache_dir() + " " + tool("qexport") + " " +
                                       run + " -f merged-fp16 --base-weights trained -o " + merged,
                                   &out),
              0)
        << out;
    const CheckpointReader exported = CheckpointReader::open_dir(merged);
    const at::Tensor head = exported.tensor("lm_head.weight").to(at::kFloat);
    auto slot = std::dynamic_pointer_cast<QuantizedLinearSlot>(as_trained.model->lm_head);
    ASSERT_TRUE(slot);
    const at::Tensor dequantized = slot->weight().dequantize(at::kFloat);
    EXPECT_TRUE(at::allclose(head, dequantized, /*rtol=*/1e-3, /*atol=*/1e-4));

    ASSERT_EQ(testing::run_command("QTRAIN_CACHE_DIR=" + cache_dir() + " " + tool("qgen") + " " +
                                       run + " --prompt hello -n 4",
                                   &out),
              0)
        << out;
  }
}

INSTANTIATE_TEST_SUITE_P(Types, QuantizedLmHeadCli, ::testing::Values("nf4", "fp4", "int8", "int4"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace qtrain

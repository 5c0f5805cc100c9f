// qmem's estimate (trainer/memory_estimate.h) against measurement on the CPU. Every component
// estimate_memory prices is compared with the bytes LibTorch's CPU allocator really holds for it
// (trainer/cpu_allocation_counter.h) while the trainer's code path runs: build_training_model,
// make_optimizer, gradient checkpointing, packed rows, CausalLM::hidden_states, the chunked loss
// with training.loss_chunk_tokens, backward, optimizer steps, on three shapes: the tiny preset,
// the 100m preset and a 1.1B shape (TinyLlama's), the last two with synthetic NF4 weights.
//
// What is measured, in allocator bytes:
//   base weights      what build_training_model allocates, less the adapters' tensors
//   adapter params    the adapters' tensors
//   adapter grads     what stays allocated after the first micro-batch's backward
//   optimizer states  what make_optimizer and the first step leave allocated
//   activations       the most a micro-batch's forward and backward hold above what was
//                     allocated before it (the loss excepted), measured on the second micro-batch
//                     of a step, when the gradients and states are already there
//   logits            the most the chunked loss adds to what forward kept
//   total             the peak of the whole run
#include "models/config.h"
#include "models/llama.h"
#include "models/tiny_model.h"
#include "peft/apply_lora.h"
#include "trainer/chunked_loss.h"
#include "trainer/cpu_allocation_counter.h"
#include "trainer/dry_run.h"
#include "trainer/memory_estimate.h"
#include "trainer/optim/optimizer.h"
#include "trainer/recipe/recipe.h"
#include "trainer/training_model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace qtrain {
namespace {

namespace fs = std::filesystem;

constexpr double kMiB = 1 << 20;

// One packed micro-batch of random tokens: each row holds three samples of T/2, T/4 and T/4
// tokens (position ids restart in each), every label a real token.
struct PackedBatch {
  at::Tensor input_ids;     // [B, T] int64
  at::Tensor position_ids;  // [B, T] int64
  at::Tensor labels;        // [B, T] int64
  at::Tensor cu_seqlens;    // int32 [3B + 1]
  int64_t max_seqlen = 0;
};

PackedBatch packed_batch(int64_t batch, int64_t seq_len, int64_t vocab) {
  PackedBatch b;
  b.input_ids = at::randint(vocab, {batch, seq_len}, at::kLong);
  b.labels = at::randint(vocab, {batch, seq_len}, at::kLong);
  const int64_t lengths[] = {seq_len / 2, seq_len / 4, seq_len - seq_len / 2 - seq_len / 4};
  std::vector<int32_t> cu = {0};
  std::vector<int64_t> positions;
  for (int64_t row = 0; row < batch; ++row) {
    for (int64_t length : lengths) {
      cu.push_back(cu.back() + static_cast<int32_t>(length));
      for (int64_t p = 0; p < length; ++p) positions.push_back(p);
    }
  }
  b.position_ids = at::tensor(positions, at::kLong).view({batch, seq_len});
  b.cu_seqlens = at::tensor(cu, at::kInt);
  b.max_seqlen = seq_len / 2;
  return b;
}

ForwardInputs forward_inputs(const PackedBatch& b) {
  return {.input_ids = b.input_ids,
          .position_ids = b.position_ids,
          .cu_seqlens = b.cu_seqlens,
          .cu_seqlens_host = b.cu_seqlens,
          .max_seqlen = b.max_seqlen};
}

int64_t tensor_bytes(const std::vector<at::Tensor>& tensors) {
  int64_t bytes = 0;
  for (const at::Tensor& t : tensors) bytes += t.defined() ? static_cast<int64_t>(t.nbytes()) : 0;
  return bytes;
}

// Runs `recipe` on the CPU for `steps` optimizer steps of two micro-batches each (the trainer's
// grad_accum_steps = 2) and measures every component (see the file comment).
MemoryEstimate measure(const Recipe& recipe, int64_t steps) {
  CpuAllocationCounter counter;
  int64_t run_peak = 0;
  // The peak since the last reset_peak(), folded into the run's.
  auto phase_peak = [&] {
    run_peak = std::max(run_peak, counter.peak());
    return counter.peak();
  };
  const int64_t start = counter.current();
  MemoryEstimate m;

  at::manual_seed(recipe.training.seed);
  const TrainingModel model = build_training_model(recipe);
  model.model->set_gradient_checkpointing(recipe.training.gradient_checkpointing);
  model.model->train();
  NamedParameters named;
  std::vector<at::Tensor> params;
  for (const auto& [module, adapter] : model.adapters) {
    for (const auto& [name, tensor] : adapter->adapter_tensors()) {
      named.emplace_back(module + "." + name, tensor);
      params.push_back(tensor);
    }
  }
  m.adapter_params = tensor_bytes(params);
  m.base_weights = counter.current() - start - m.adapter_params;
  // Loading has its own transients (a synthetic model draws each tensor in float32 before
  // quantizing it): the training peak starts here.
  const int64_t load_peak = counter.peak() - start;
  counter.reset_peak();

  const int64_t before_optimizer = counter.current();
  const auto optimizer =
      make_optimizer(recipe.training.optimizer, named, {.lr = recipe.training.lr});
  const int64_t vocab = model.model->config().vocab_size;
  const int64_t batch = recipe.training.micro_batch_size;
  const int64_t seq_len = recipe.data.max_seq_len;
  const int64_t chunk = recipe.training.loss_chunk_tokens;
  const double softcap = model.model->config().final_logit_softcapping.value_or(0.0);
  const double loss_tokens = 2.0 * batch * (seq_len - 1);  // of a step: two micro-batches
  auto micro_batch = [&] {
    const PackedBatch b = packed_batch(batch, seq_len, vocab);
    const at::Tensor hidden = model.model->hidden_states(forward_inputs(b));
    (chunked_causal_lm_loss_sum(hidden, *model.model->lm_head, b.labels, chunk, softcap) /
     loss_tokens)
        .backward();
    phase_peak();
  };

  for (int64_t step = 0; step < steps; ++step) {
    const int64_t before_first = counter.current();
    micro_batch();
    if (step == 0) {
      m.adapter_grads = counter.current() - before_first;
      std::vector<at::Tensor> grads;
      for (const at::Tensor& p : params) grads.push_back(p.grad());
      EXPECT_EQ(m.adapter_grads, tensor_bytes(grads)) << "only the gradients outlive backward";
    }
    if (step == 0) {
      // The second micro-batch, phase by phase.
      const PackedBatch b = packed_batch(batch, seq_len, vocab);
      const int64_t before = counter.current();
      counter.reset_peak();
      const at::Tensor hidden = model.model->hidden_states(forward_inputs(b));
      const int64_t forward_peak = phase_peak() - before;
      const int64_t kept = counter.current() - before;
      counter.reset_peak();
      const at::Tensor sum =
          chunked_causal_lm_loss_sum(hidden, *model.model->lm_head, b.labels, chunk, softcap);
      m.logits = phase_peak() - before - kept;
      counter.reset_peak();
      (sum / loss_tokens).backward();
      m.activations = std::max(forward_peak, phase_peak() - before);
    } else {
      micro_batch();
    }
    optimizer->step();
    phase_peak();
    optimizer->zero_grad();
    if (step == 0) m.optimizer_states = counter.current() - before_optimizer;
  }
  EXPECT_EQ(counter.current(), start + m.base_weights + m.adapter_params + m.optimizer_states)
      << "after zero_grad only the model and the optimizer's states stay";
  m.total = run_peak - start;
  std::printf("  (loading peaked at %.2f MiB)\n", load_peak / kMiB);
  return m;
}

std::string write_config_dir(const std::string& name, const ModelConfig& config) {
  const fs::path dir = fs::temp_directory_path() / ("qtrain-memory-calibration-" + name);
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << config.to_json().dump(2);
  return dir.string();
}

// tiny_qlora.yaml's settings (float32 base and adapters, NF4, LoRA r=8 with dropout on every
// linear, AdamW) with packed rows and gradient checkpointing.
Recipe cpu_recipe(const std::string& path, bool synthetic, int64_t batch, int64_t seq_len) {
  Recipe r;
  r.model.path = path;
  r.model.synthetic = synthetic;
  r.model.dtype = "float32";
  r.model.device = "cpu";
  r.adapter.dtype = "float32";
  r.data.packing = true;
  r.data.max_seq_len = seq_len;
  r.training.micro_batch_size = batch;
  r.training.optimizer = "adamw";
  r.training.gradient_checkpointing = true;
  return r;
}

// Prints the table and checks each component within `tolerance` of its measurement.
void expect_close(const std::string& name, const MemoryEstimate& e, const MemoryEstimate& m,
                  double tolerance) {
  const std::pair<const char*, std::pair<int64_t, int64_t>> rows[] = {
      {"base weights", {e.base_weights, m.base_weights}},
      {"adapter params", {e.adapter_params, m.adapter_params}},
      {"adapter grads", {e.adapter_grads, m.adapter_grads}},
      {"optimizer states", {e.optimizer_states, m.optimizer_states}},
      {"activations", {e.activations, m.activations}},
      {"logits", {e.logits, m.logits}},
      {"total", {e.total, m.total}},
  };
  std::printf("%s: component, estimate MiB, measured MiB, estimate / measured\n", name.c_str());
  for (const auto& [what, values] : rows) {
    const auto [estimated, measured] = values;
    const double ratio = static_cast<double>(estimated) / static_cast<double>(measured);
    std::printf("  %-18s %10.2f %10.2f %7.3f\n", what, estimated / kMiB, measured / kMiB, ratio);
    EXPECT_GT(measured, 0) << name << ": " << what;
    EXPECT_NEAR(ratio, 1.0, tolerance) << name << ": " << what;
  }
}

void calibrate(const std::string& name, const Recipe& recipe, int64_t steps) {
  const MemoryEstimate estimate = estimate_memory(recipe, recipe_model_config(recipe));
  expect_close(name, estimate, measure(recipe, steps), 0.10);
}

TEST(MemoryCalibration, TinyPreset) {
  calibrate("builtin:tiny, 8 x 256 tokens", cpu_recipe("builtin:tiny", false, 8, 256), 2);
}

TEST(MemoryCalibration, Preset100m) {
  const std::string dir = write_config_dir("100m", tiny_model_config("llama", "100m"));
  calibrate("100m preset (synthetic), 1 x 256 tokens", cpu_recipe(dir, true, 1, 256), 2);
}

// TinyLlama-1.1B's shape: 22 layers, hidden 2048, MLP 5632, 32 heads over 4 key/value heads.
TEST(MemoryCalibration, OneBillionShape) {
  ModelConfig c = tiny_model_config("llama", "100m");
  c.vocab_size = 32000;
  c.hidden_size = 2048;
  c.intermediate_size = 5632;
  c.num_hidden_layers = 22;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 4;
  c.head_dim = 64;
  const std::string dir = write_config_dir("1b", c);
  calibrate("1.1B (synthetic), 1 x 64 tokens", cpu_recipe(dir, true, 1, 64), 1);
}

}  // namespace
}  // namespace qtrain

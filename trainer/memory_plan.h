// `qmem RECIPE.yaml [--gpu-mem 48G]`: the memory a run needs, broken down, whether it fits a
// budget and what to change when it does not; beside a finished run's measured peak.
#pragma once

#include "trainer/memory_estimate.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

struct Recipe;

struct MemoryPlan {
  MemoryEstimate estimate;             // the recipe as written
  int64_t activations_other_mode = 0;  // activations with gradient checkpointing flipped
  // What the process holds besides the model state. CUDA (model.device cuda or auto): the context
  // and cuBLAS workspaces (kCudaContextBytes) plus kFragmentationMargin of the estimate for the
  // caching allocator; CPU: the resident set of a process with LibTorch loaded (measured on this
  // one) + kCpuTrainerBytes for the trainer's data, tokenizer and loader buffers +
  // (kCpuActivationFactor - 1) x (activations + logits).
  int64_t runtime = 0;
  int64_t needed = 0;  // estimate.total + runtime
  std::optional<int64_t> budget;
  bool fits = true;
  // Changes that bring `needed` within the budget, each with its figure ("training.
  // micro_batch_size=2: 41.20 GiB"); empty when it fits or nothing tried does.
  std::vector<std::string> suggestions;
  // From output.dir/metrics.jsonl of a run: the peak the trainer logged (CUDA: allocated bytes,
  // comparable with estimate.total; CPU: peak resident set, comparable with `needed`).
  std::optional<int64_t> measured_peak;
  int64_t comparable_estimate = 0;
};

constexpr int64_t kCudaContextBytes = int64_t{600} << 20;
constexpr double kFragmentationMargin = 0.10;
// CPU runs, calibrated on the tiny recipe at micro-batch 1, 8 and 16 (peak resident set from
// metrics.jsonl): a trainer holds about 32 MiB more than qmem's own process before the first
// step, and each token costs about twice the activation + logit bytes the estimate counts (49
// vs 25 KB on that recipe) with gradient checkpointing, 1.25 times without. The recomputed layer's
// activations and their gradients coexist during its backward pass, CPU autograd runs unfused
// float32 ops that each keep their inputs (SiLU and gate products, RMSNorm and RoPE
// intermediates, dropout masks, log-softmax), and glibc's heap keeps freed blocks resident.
constexpr int64_t kCpuTrainerBytes = int64_t{32} << 20;
constexpr double kCpuActivationFactor = 2.0;
constexpr double kCpuActivationFactorNoCheckpointing = 1.25;

// "48G", "48GB", "48GiB", "512M", "1.5T", or plain bytes; binary units. Error(kUsage) naming
// the text when it is none of these or not positive.
int64_t parse_memory_size(const std::string& text);

MemoryPlan plan_memory(const Recipe& recipe, std::optional<int64_t> budget);

// The report qmem prints.
std::string describe_memory_plan(const Recipe& recipe, const MemoryPlan& plan);

}  // namespace qtrain

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
  // (kCpuActivationFactor - 1) x the activation phase (estimate.total less the states).
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
// CPU runs. The estimate's components are tensor bytes, and the CPU allocator's count agrees
// with them (tests/trainer/test_memory_calibration.cpp: every component within 3% on the tiny
// preset, the 100m preset and a 1.1B shape). The resident set is more: calibrated on
// tiny_qlora.yaml at micro-batch 1, 8 and 16 (3 steps, peak resident set from metrics.jsonl), a
// trainer holds about 32 MiB more than qmem's own process before the first step, and the
// activation phase (total less the weights, adapters, gradients and optimizer states) costs about
// twice its tensor bytes with gradient checkpointing (needed vs measured: +0.1%, -0.5%, -1.2%),
// 1.25 times without (micro-batch 8: -0.3%). That excess is not tensor storage: glibc's heap keeps
// the blocks each recomputed layer frees resident, and autograd's nodes live outside the
// allocator.
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

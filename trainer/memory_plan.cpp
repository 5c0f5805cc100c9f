#include "trainer/memory_plan.h"

#include "core/error.h"
#include "core/json_file.h"
#include "trainer/dry_run.h"
#include "trainer/memory_usage.h"
#include "trainer/recipe/recipe.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>

namespace qtrain {
namespace {

std::string gib(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  return text;
}

// qmem plans GPU runs: model.device auto counts as CUDA.
bool on_cuda(const Recipe& recipe) {
  return recipe.model.device != "cpu";
}

// Device bytes at the worst moment. Paged states are managed memory the driver moves to the host
// while forward and backward need the room, and back for the optimizer step, when activations and
// logits are gone: the peak is the larger of the two phases.
int64_t device_peak(const Recipe& recipe, const MemoryEstimate& e) {
  if (e.paged_states == 0) return e.total;
  const int64_t backward = e.total - e.paged_states;
  const int64_t step = e.base_weights + e.adapter_params + e.adapter_grads + e.optimizer_states;
  return std::max(backward, step);
}

int64_t runtime_bytes(const Recipe& recipe, const MemoryEstimate& e) {
  if (on_cuda(recipe)) {
    return kCudaContextBytes + static_cast<int64_t>(kFragmentationMargin * device_peak(recipe, e));
  }
  const double factor = recipe.training.gradient_checkpointing
                            ? kCpuActivationFactor
                            : kCpuActivationFactorNoCheckpointing;
  const int64_t states = e.base_weights + e.adapter_params + e.adapter_grads + e.optimizer_states;
  const double unfused = (factor - 1.0) * static_cast<double>(e.total - states);
  return memory_usage(c10::Device(c10::kCPU)).current + kCpuTrainerBytes +
         static_cast<int64_t>(unfused);
}

std::optional<int64_t> measured_peak(const Recipe& recipe) {
  std::ifstream in(recipe.output.dir + "/metrics.jsonl");
  if (!in) return std::nullopt;
  std::optional<int64_t> peak;
  std::string line;
  while (std::getline(in, line)) {
    try {
      const auto record = parse_json_text(line, recipe.output.dir + "/metrics.jsonl");
      if (record.contains("peak_memory_bytes")) {
        peak = std::max(peak.value_or(0), record["peak_memory_bytes"].get<int64_t>());
      }
    } catch (const nlohmann::json::exception&) {
      continue;  // a line cut short by a kill
    } catch (const Error&) {
      continue;  // not a line qtrain wrote
    }
  }
  return peak;
}

struct Change {
  std::string description;
  std::function<bool(Recipe&)> apply;  // false: does not apply to this recipe
};

std::vector<Change> candidate_changes() {
  return {
      {"training.gradient_checkpointing=true",
       [](Recipe& r) {
         return !r.training.gradient_checkpointing && (r.training.gradient_checkpointing = true);
       }},
      {"training.optimizer=paged_adamw_8bit",
       [](Recipe& r) {
         if (r.training.optimizer == "paged_adamw_8bit") return false;
         r.training.optimizer = "paged_adamw_8bit";
         return true;
       }},
      {"training.micro_batch_size=/2 (grad_accum_steps x2)",
       [](Recipe& r) {
         if (r.training.micro_batch_size < 2) return false;
         r.training.micro_batch_size /= 2;
         r.training.grad_accum_steps *= 2;
         return true;
       }},
      {"data.max_seq_len=/2",
       [](Recipe& r) {
         if (r.data.max_seq_len < 256) return false;
         r.data.max_seq_len /= 2;
         return true;
       }},
      {"quantization.double_quant=true",
       [](Recipe& r) {
         const auto& q = r.quantization;
         if ((q.type != "nf4" && q.type != "fp4") || q.double_quant) return false;
         r.quantization.double_quant = true;
         return true;
       }},
      {"quantization.type=nf4 (double_quant=true)",
       [](Recipe& r) {
         if (r.quantization.type == "nf4" || r.adapter.type == "qalora") return false;
         r.quantization.type = "nf4";
         r.quantization.double_quant = true;
         return true;
       }},
  };
}

}  // namespace

int64_t parse_memory_size(const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  std::transform(unit.begin(), unit.end(), unit.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  int shift = -1;
  if (unit.empty() || unit == "B") shift = 0;
  if (unit == "K" || unit == "KB" || unit == "KIB") shift = 10;
  if (unit == "M" || unit == "MB" || unit == "MIB") shift = 20;
  if (unit == "G" || unit == "GB" || unit == "GIB") shift = 30;
  if (unit == "T" || unit == "TB" || unit == "TIB") shift = 40;
  if (used == 0 || shift < 0 || !(value > 0) || !std::isfinite(value)) {
    throw_error(ErrorKind::kUsage,
                "not a memory size: '" + text + "' (write e.g. 48G, 80GiB, 512M)");
  }
  return static_cast<int64_t>(std::llround(value * std::ldexp(1.0, shift)));
}

MemoryPlan plan_memory(const Recipe& recipe, std::optional<int64_t> budget) {
  const ModelConfig config = recipe_model_config(recipe);
  MemoryPlan plan;
  plan.estimate = estimate_memory(recipe, config);
  Recipe flipped = recipe;
  flipped.training.gradient_checkpointing = !recipe.training.gradient_checkpointing;
  plan.activations_other_mode = estimate_memory(flipped, config).activations;
  plan.runtime = runtime_bytes(recipe, plan.estimate);
  plan.needed = device_peak(recipe, plan.estimate) + plan.runtime;
  plan.budget = budget;
  plan.fits = !budget || plan.needed <= *budget;
  if (!plan.fits) {
    // Each change on its own, then cumulatively in this order, until one fits.
    Recipe cumulative = recipe;
    std::string applied;
    for (const Change& change : candidate_changes()) {
      Recipe alone = recipe;
      if (change.apply(alone)) {
        const MemoryEstimate e = estimate_memory(alone, config);
        const int64_t needed = device_peak(alone, e) + runtime_bytes(alone, e);
        if (needed <= *budget) plan.suggestions.push_back(change.description + ": " + gib(needed));
      }
      if (change.apply(cumulative)) {
        applied += (applied.empty() ? "" : " + ") + change.description;
        const MemoryEstimate e = estimate_memory(cumulative, config);
        const int64_t needed = device_peak(cumulative, e) + runtime_bytes(cumulative, e);
        if (plan.suggestions.empty() && needed <= *budget) {
          plan.suggestions.push_back(applied + ": " + gib(needed));
        }
      }
    }
  }
  plan.measured_peak = measured_peak(recipe);
  plan.comparable_estimate = on_cuda(recipe) ? plan.estimate.total : plan.needed;
  return plan;
}

std::string describe_memory_plan(const Recipe& recipe, const MemoryPlan& plan) {
  std::ostringstream out;
  const MemoryEstimate& e = plan.estimate;
  out << "memory for " << recipe.source << " on " << recipe.model.device << " ("
      << e.adapter_param_count << " trainable parameters)\n";
  out << e.to_table();
  out << "  activations " << (recipe.training.gradient_checkpointing ? "without" : "with")
      << " gradient checkpointing would be " << gib(plan.activations_other_mode) << "\n";
  out << "  runtime ("
      << (on_cuda(recipe) ? "CUDA context and workspaces + 10% allocator margin"
                          : "a LibTorch process's resident set + data + heap kept by CPU autograd")
      << "): " << gib(plan.runtime) << "\n";
  if (e.paged_states > 0) {
    out << "  paged optimizer states (" << gib(e.paged_states)
        << ") leave the GPU during forward and backward and return for the step\n";
  }
  if (e.host_embeddings + e.host_activations > 0) {
    out << "  host memory: " << gib(e.host_embeddings + e.host_activations)
        << " pinned (embeddings " << gib(e.host_embeddings) << ", offloaded activations "
        << gib(e.host_activations) << " per micro-batch)\n";
  }
  out << "  needed: " << gib(plan.needed) << "\n";
  if (plan.budget) {
    out << (plan.fits ? "fits" : "does NOT fit") << " in " << gib(*plan.budget);
    if (plan.fits) {
      out << " (" << gib(*plan.budget - plan.needed) << " to spare)\n";
    } else {
      out << " (" << gib(plan.needed - *plan.budget) << " over)\n";
      if (plan.suggestions.empty()) {
        out << "no change tried here (alone or combined) makes it fit: use a smaller model or more "
               "memory\n";
      }
      for (const auto& s : plan.suggestions) out << "  would fit with " << s << "\n";
    }
  }
  if (plan.measured_peak) {
    const double ratio = static_cast<double>(plan.comparable_estimate) / *plan.measured_peak;
    char text[64];
    std::snprintf(text, sizeof(text), "%+.1f%%", 100.0 * (ratio - 1.0));
    out << "measured peak of the run in " << recipe.output.dir << ": " << gib(*plan.measured_peak)
        << " (" << (on_cuda(recipe) ? "allocated" : "resident set") << "); estimate "
        << gib(plan.comparable_estimate) << " (" << text << ")\n";
  }
  return out.str();
}

}  // namespace qtrain

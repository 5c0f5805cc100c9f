#include "tools/export_check.h"

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "export/export_readback.h"
#include "models/hf_names.h"
#include "models/llama.h"
#include "models/quantized_loader.h"
#include "trainer/evaluate.h"
#include "trainer/recipe/recipe.h"
#include "trainer/training_data.h"
#include "trainer/training_model.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

namespace qtrain {
namespace fs = std::filesystem;
namespace {

std::string report_path_for(const std::string& output, ExportFormat format) {
  return format == ExportFormat::kGguf ? output + ".export_check.json"
                                       : (fs::path(output) / "export_check.json").string();
}

// "the base at nf4 (blocks of 64, double quant) + the LoRA adapter": how the run trained.
std::string trained_description(const Recipe& recipe, const ExportSource& source) {
  const auto& q = recipe.quantization;
  std::string base;
  if (q.type == "none") {
    base = "the base in " + recipe.model.dtype;
  } else if (q.type == "int4") {
    base = "the base at int4 (groups of " + std::to_string(q.group_size) + ")";
  } else {
    base = "the base at " + q.type + " (blocks of " + std::to_string(q.blocksize) +
           (q.double_quant ? ", double quant)" : ")");
  }
  return base + " + the " + (source.qalora_group_size > 0 ? "QA-LoRA" : "LoRA") + " adapter " +
         source.adapter_dir;
}

std::string not_a_run(const std::string& input) {
  return input + " is not a qtrain run directory (no recipe.yaml): there is no held-out split to " +
         "evaluate on";
}

int64_t parameter_count(const std::string& model_dir) {
  int64_t n = 0;
  for (const TensorSpec& spec : hf_tensor_specs(read_model_dir_config(model_dir))) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    n += numel;
  }
  return n;
}

// The run's own device when this machine has it, else the CPU.
c10::Device check_device(const Recipe& recipe) {
  try {
    return resolve_device(recipe.model.device);
  } catch (const Error&) {
    return c10::kCPU;
  }
}

HeldOutLoss held_out_loss(CausalLM& model, const Recipe& recipe, const TrainingData& split,
                          int64_t* loss_tokens) {
  const EvalResult eval =
      evaluate(model, split.eval, recipe.training.micro_batch_size, recipe.data.max_seq_len,
               padding_id(*split.tokenizer),
               /*max_batches=*/0, /*shard=*/0, /*num_shards=*/1, recipe.training.loss_chunk_tokens);
  *loss_tokens = eval.tokens;
  return {eval.loss, eval.perplexity};
}

nlohmann::json report_json(const ExportCheck& c, const std::string& output,
                           const ExportOptions& options) {
  nlohmann::json format = export_format_name(options.format);
  if (options.format == ExportFormat::kGguf) format = "gguf " + options.gguf_type;
  return {
      {"export", output},
      {"format", format},
      {"split", "the run's held-out split"},
      {"examples", c.examples},
      {"loss_tokens", c.tokens},
      {"parameter_tokens", c.parameter_tokens},
      {"device", c.device},
      {"dtype", c.dtype},
      {"trained",
       {{"model", c.trained_model},
        {"loss", c.trained.loss},
        {"perplexity", c.trained.perplexity}}},
      {"exported",
       {{"model", c.exported_model},
        {"loss", c.exported.loss},
        {"perplexity", c.exported.perplexity}}},
      {"loss_change", c.exported.loss - c.trained.loss},
      {"loss_change_percent", 100.0 * (c.exported.loss / c.trained.loss - 1.0)},
      {"perplexity_change_percent", 100.0 * (c.exported.perplexity / c.trained.perplexity - 1.0)},
      {"seconds", c.seconds}};
}

}  // namespace

void preflight_export_check(const std::string& input, ExportCheckMode mode) {
  if (mode == ExportCheckMode::kOn && !fs::exists(fs::path(input) / "recipe.yaml")) {
    throw Error(ErrorKind::kUsage, "--check: " + not_a_run(input));
  }
}

ExportCheck check_export(const std::string& input, const ExportSource& source,
                         const std::string& output, const ExportOptions& options,
                         ExportCheckMode mode) {
  ExportCheck check;
  const std::string report = report_path_for(output, options.format);
  // A GGUF file's old report would describe the file this export replaced.
  auto not_run = [&](const std::string& why) {
    if (mode == ExportCheckMode::kOn) throw Error(ErrorKind::kUsage, "--check: " + why);
    std::error_code ec;
    if (options.format == ExportFormat::kGguf) fs::remove(report, ec);
    check.note = why;
    return check;
  };
  if (mode == ExportCheckMode::kOff) return not_run("--no-check");
  if (options.format == ExportFormat::kAdapter) {
    check.note = "the adapter export is the trained adapter itself";
    return check;
  }
  if (!fs::exists(fs::path(input) / "recipe.yaml")) {
    return not_run(not_a_run(input));
  }
  const Recipe recipe = load_recipe((fs::path(input) / "recipe.yaml").string());
  if (recipe.model.synthetic) return not_run("the run trained a synthetic model (model.synthetic)");
  TrainingData split;
  try {
    split = load_training_data(recipe, source.model_dir);
  } catch (const Error& e) {
    if (mode == ExportCheckMode::kOn) throw;
    return not_run(std::string("the run's data cannot be read here (") + e.what() + ")");
  }
  if (split.eval.empty()) {
    return not_run("the run holds out no data (data.eval_fraction 0 and no data.eval_path)");
  }
  int64_t split_tokens = 0;
  for (const Example& example : split.eval)
    split_tokens += static_cast<int64_t>(example.ids.size());
  const c10::Device device = check_device(recipe);
  const double cost = static_cast<double>(parameter_count(source.model_dir)) * split_tokens;
  const double budget = device.is_cuda() ? kAutoCheckBudgetCuda : kAutoCheckBudget;
  if (mode == ExportCheckMode::kAuto && cost > budget) {
    char why[200];
    std::snprintf(why, sizeof(why),
                  "parameters x held-out tokens = %.3g, over the %.0e evaluated unasked on %s; "
                  "pass --check to run it",
                  cost, budget, device.is_cuda() ? "a GPU" : "a CPU");
    return not_run(why);
  }

  const auto started = std::chrono::steady_clock::now();
  const at::ScalarType dtype = resolve_dtype(recipe.model.dtype, "model.dtype");
  check.parameter_tokens = cost;
  check.device = device.str();
  check.dtype = recipe.model.dtype;
  check.examples = static_cast<int64_t>(split.eval.size());
  check.trained_model = trained_description(recipe, source);
  {
    // The base loaded as training loaded it, with the exported adapter attached as its file
    // says (init_from takes LoRA and QA-LoRA files alike; the recipe's type only chooses fresh
    // adapters, which init_from replaces).
    Recipe trained = recipe;
    trained.model.path = source.model_dir;
    trained.model.device = check.device;
    trained.model.embeddings_on_host = false;
    trained.adapter.type = "lora";
    trained.adapter.init_from = source.adapter_dir;
    const TrainingModel model = build_training_model(trained);
    check.trained = held_out_loss(*model.model, recipe, split, &check.tokens);
  }
  check.exported_model = export_readback_description(options.format);
  try {
    const auto exported = load_export(output, options.format, source.model_dir, dtype, device);
    int64_t tokens = 0;
    check.exported = held_out_loss(*exported, recipe, split, &tokens);
  } catch (const Error& e) {
    throw Error(e.kind(), "the export is written, but checking it failed: " + e.message(),
                e.context());
  }
  check.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  check.ran = true;
  check.report_path = report;
  write_file_atomically(report, report_json(check, output, options).dump(2) + "\n");
  return check;
}

std::string export_check_text(const ExportCheck& c) {
  if (!c.ran) return "  check: not run: " + c.note + "\n";
  char text[1600];
  std::snprintf(
      text, sizeof(text),
      "  check on the run's held-out split (%lld examples, %lld loss tokens; %s, %s, %.1f s):\n"
      "    trained:  loss %.5f  perplexity %.4f  (%s)\n"
      "    exported: loss %.5f  perplexity %.4f  (%s)\n"
      "    change:   loss %+.5f (%+.2f%%), perplexity %+.2f%%\n"
      "  check written to %s\n",
      static_cast<long long>(c.examples), static_cast<long long>(c.tokens), c.device.c_str(),
      c.dtype.c_str(), c.seconds, c.trained.loss, c.trained.perplexity, c.trained_model.c_str(),
      c.exported.loss, c.exported.perplexity, c.exported_model.c_str(),
      c.exported.loss - c.trained.loss, 100.0 * (c.exported.loss / c.trained.loss - 1.0),
      100.0 * (c.exported.perplexity / c.trained.perplexity - 1.0), c.report_path.c_str());
  return text;
}

}  // namespace qtrain

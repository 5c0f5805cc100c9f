// qeval: perplexity of a model (and adapter) on held-out text, at one base precision or compared
// across several.
//
//   qeval MODEL --data FILE [--adapter DIR] [--precision bf16 | --compare bf16,int8,nf4,fp4]
//         [--max-len 512] [--stride 256] [--max-tokens N] [--field text]
//         [--dtype float32] [--device cpu] [--json OUT.json] [--csv OUT.csv]
//   qeval --recipe RECIPE.yaml [MODEL] [--adapter DIR] [--compare ...]
//
// MODEL is an HF directory or builtin:<preset>; a bitsandbytes 4-bit directory (a `*-bnb-4bit`
// model, a `qexport --format nf4` export) loads at its stored precision, and a --precision or
// --compare entry naming another is refused (models/stored_precision.h). FILE is .txt (one
// document) or .jsonl ({"text"}): sliding-window perplexity. With --recipe: the recipe's held-out
// split, formatted, masked and batched exactly as training evaluates it (mean loss over response
// tokens); MODEL defaults to the recipe's model.path. The table: precision, base weight memory,
// perplexity, change vs the first row, eval tokens/s.
#include "core/atomic_file.h"
#include "core/dtype.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "models/llama.h"
#include "models/stored_precision.h"
#include "peft/peft_files.h"
#include "tools/cli_main.h"
#include "trainer/evaluate.h"
#include "trainer/perplexity.h"
#include "trainer/precision_model.h"
#include "trainer/recipe/recipe.h"
#include "trainer/training_data.h"
#include "trainer/training_model.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Row {
  std::string precision;
  int64_t weight_bytes;
  qtrain::PerplexityResult result;
};

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

double change_percent(const Row& row, const Row& first) {
  return 100.0 * (row.result.perplexity / first.result.perplexity - 1.0);
}

std::string text_table(const std::vector<Row>& rows) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof(line), "%-9s %14s %12s %10s %10s %12s\n", "precision", "weights (MiB)",
                "perplexity", "mean loss", "vs first", "eval tok/s");
  out += line;
  for (const Row& r : rows) {
    std::snprintf(line, sizeof(line), "%-9s %14.2f %12.4f %10.5f %+9.2f%% %12.0f\n",
                  r.precision.c_str(), r.weight_bytes / 1048576.0, r.result.perplexity,
                  r.result.mean_loss, change_percent(r, rows.front()), r.result.tokens_per_second);
    out += line;
  }
  return out;
}

nlohmann::json json_rows(const std::vector<Row>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const Row& r : rows) {
    out.push_back({{"precision", r.precision},
                   {"weight_bytes", r.weight_bytes},
                   {"perplexity", r.result.perplexity},
                   {"mean_loss", r.result.mean_loss},
                   {"change_vs_first_percent", change_percent(r, rows.front())},
                   {"scored_tokens", r.result.scored_tokens},
                   {"windows", r.result.windows},
                   {"eval_tokens_per_second", r.result.tokens_per_second}});
  }
  return out;
}

std::string csv_rows(const std::vector<Row>& rows) {
  std::string out =
      "precision,weight_bytes,perplexity,mean_loss,change_vs_first_percent,scored_tokens,"
      "eval_tokens_per_second\n";
  char line[256];
  for (const Row& r : rows) {
    std::snprintf(line, sizeof(line), "%s,%lld,%.6f,%.6f,%.4f,%lld,%.1f\n", r.precision.c_str(),
                  static_cast<long long>(r.weight_bytes), r.result.perplexity, r.result.mean_loss,
                  change_percent(r, rows.front()), static_cast<long long>(r.result.scored_tokens),
                  r.result.tokens_per_second);
    out += line;
  }
  return out;
}

// The recipe's held-out examples through the trainer's own evaluation.
qtrain::PerplexityResult held_out_split(qtrain::CausalLM& model, const qtrain::Recipe& recipe,
                                        const qtrain::TrainingData& split) {
  const auto started = std::chrono::steady_clock::now();
  const qtrain::EvalResult eval =
      qtrain::evaluate(model, split.eval, recipe.training.micro_batch_size, recipe.data.max_seq_len,
                       qtrain::padding_id(*split.tokenizer), /*max_batches=*/0, /*shard=*/0,
                       /*num_shards=*/1, recipe.training.loss_chunk_tokens);
  qtrain::PerplexityResult out;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  out.mean_loss = eval.loss;
  out.perplexity = eval.perplexity;
  out.scored_tokens = eval.tokens;
  out.windows = static_cast<int64_t>(split.eval.size());
  out.tokens_per_second = out.seconds > 0 ? eval.tokens / out.seconds : 0;
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, data, adapter, precision, compare, field = "text";
  std::string dtype = "float32", device_name = "cpu", json_out, csv_out, recipe_path;
  qtrain::PerplexityOptions options;
  CLI::App app{"Perplexity of a model (+ adapter) on held-out text, per base precision.", "qeval"};
  app.add_option("model", model_path, "HF model directory or builtin:<preset>");
  app.add_option("--data", data, ".txt file or .jsonl with a text field");
  app.add_option("--recipe", recipe_path, "evaluate this recipe's held-out split instead");
  app.add_option("--adapter", adapter, "a PEFT adapter directory to attach");
  app.add_option("--precision", precision,
                 "fp32 | bf16 | fp16 | int8 | nf4 | fp4 | int4 (default: bf16; a bitsandbytes "
                 "4-bit MODEL: its stored precision)");
  app.add_option("--compare", compare, "comma-separated precisions, e.g. bf16,int8,nf4,fp4");
  app.add_option("--max-len", options.max_len, "tokens per window")->capture_default_str();
  app.add_option("--stride", options.stride, "tokens between window starts")->capture_default_str();
  app.add_option("--max-tokens", options.max_tokens, "score at most this many tokens (0: all)")
      ->capture_default_str();
  app.add_option("--field", field, "the text field of .jsonl records")->capture_default_str();
  app.add_option("--dtype", dtype, "compute dtype: float32 | bfloat16 | float16")
      ->capture_default_str();
  app.add_option("--device", device_name, "cpu | cuda | cuda:N")->capture_default_str();
  app.add_option("--json", json_out, "also write the table as JSON");
  app.add_option("--csv", csv_out, "also write the table as CSV");
  return qtrain::run_cli("qeval", app, argc, argv, [&] {
    if (data.empty() == recipe_path.empty()) {
      throw qtrain::Error(qtrain::ErrorKind::kUsage, "give either --data FILE or --recipe RECIPE");
    }
    std::optional<qtrain::Recipe> recipe;
    if (!recipe_path.empty()) {
      recipe = qtrain::load_recipe(recipe_path);
      if (model_path.empty()) model_path = recipe->model.path;
    }
    if (model_path.empty()) throw qtrain::Error(qtrain::ErrorKind::kUsage, "no MODEL given");
    const std::string dir = qtrain::resolve_model_dir(model_path);
    const c10::Device device = qtrain::resolve_device(device_name);
    const at::ScalarType compute = qtrain::resolve_dtype(dtype, "--dtype");
    std::vector<std::string> precisions;
    if (compare.empty()) {
      precisions.push_back(qtrain::precision_for_model_dir(dir, precision, "bf16", "--precision"));
    } else {
      for (const std::string& p : split_list(compare)) {
        precisions.push_back(qtrain::precision_for_model_dir(dir, p, p, "--compare"));
      }
    }
    std::optional<qtrain::LoadedAdapter> loaded;
    int64_t group = 32;
    if (!adapter.empty()) {
      loaded = qtrain::load_peft_adapter(adapter);
      if (loaded->use_qalora) group = loaded->qalora_group_size;
    }
    std::vector<int64_t> ids;
    qtrain::TrainingData split;
    if (recipe) {
      split = qtrain::load_training_data(*recipe, dir);
      if (split.eval.empty()) {
        throw qtrain::Error(qtrain::ErrorKind::kConfig,
                            "the recipe holds out no data (set data.eval_path or eval_fraction)",
                            {.file = recipe_path, .field = "data.eval_fraction"});
      }
    } else {
      ids = qtrain::evaluation_token_stream(data, *qtrain::load_tokenizer(dir), field);
    }

    std::vector<Row> rows;
    for (const std::string& p : precisions) {
      // A run's recipe says how its base was quantized (skip_modules: [] quantizes lm_head).
      qtrain::PrecisionOptions built_as =
          recipe ? qtrain::precision_options_of(recipe->quantization, p)
                 : qtrain::PrecisionOptions{};
      if (!recipe || (loaded && loaded->use_qalora)) built_as.int4_group_size = group;
      qtrain::PrecisionModel m = qtrain::load_model_at_precision(dir, p, compute, device, built_as);
      if (loaded) qtrain::attach_peft_adapter(*m.model, *loaded);
      rows.push_back({p, m.weight_bytes,
                      recipe ? held_out_split(*m.model, *recipe, split)
                             : qtrain::sliding_window_perplexity(*m.model, ids, options, device)});
      std::fprintf(stderr, "qeval: %s perplexity %.4f (%lld tokens)\n", p.c_str(),
                   rows.back().result.perplexity,
                   static_cast<long long>(rows.back().result.scored_tokens));
    }
    std::printf("%s", text_table(rows).c_str());
    if (!json_out.empty()) {
      const nlohmann::json doc = {{"model", dir},
                                  {"adapter", adapter},
                                  {"data", recipe ? recipe_path + " (held-out split)" : data},
                                  {"max_len", options.max_len},
                                  {"stride", options.stride},
                                  {"rows", json_rows(rows)}};
      qtrain::write_file_atomically(json_out, doc.dump(2) + "\n");
    }
    if (!csv_out.empty()) qtrain::write_file_atomically(csv_out, csv_rows(rows));
    return 0;
  });
}

// qtrain: fine-tunes a quantized base model with LoRA / QA-LoRA adapters as a YAML recipe says.
//
//   qtrain RECIPE.yaml [section.key=value ...] [--dry-run] [--resume] [--nproc N]
//   qtrain data-check RECIPE.yaml [section.key=value ...]
//
// Under torchrun-style or Slurm variables (trainer/distributed/launch_env.h) the process is one
// data-parallel rank; --nproc N starts N such ranks on this machine.
//
// Exit codes: 0 done, 2 bad command line, 3 bad recipe, 4 I/O, 5 malformed file, 6 shape
// mismatch, 7 unsupported, 8 training diverged, 9 a peer rank failed or hung (distributed),
// 75 stopped by SIGTERM/SIGINT after writing a checkpoint (continue with --resume), 70 internal
// error.
#include "core/error.h"
#include "core/log.h"
#include "export/export_formats.h"
#include "export/export_source.h"
#include "tools/cli_main.h"
#include "tools/local_launcher.h"
#include "trainer/data_check.h"
#include "trainer/dry_run.h"
#include "trainer/interrupt.h"
#include "trainer/memory_estimate.h"
#include "trainer/recipe/recipe.h"
#include "trainer/trainer.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

// output.export: each entry written into <run>/export/ as qexport would ("gguf:q4_k_m" ->
// export/gguf-q4_k_m.gguf).
void run_recipe_exports(const qtrain::Recipe& recipe, const std::string& run_dir) {
  if (recipe.output.exports.empty()) return;
  const qtrain::ExportSource source = qtrain::open_export_source(run_dir);
  for (const std::string& entry : recipe.output.exports) {
    const size_t colon = entry.find(':');
    qtrain::ExportOptions options;
    options.format = qtrain::export_format_from_name(entry.substr(0, colon));
    options.overwrite = true;  // the run's own export directory, from this run
    std::string out = run_dir + "/export/" + entry.substr(0, colon);
    if (options.format == qtrain::ExportFormat::kGguf) {
      options.gguf_type = colon == std::string::npos ? "f16" : entry.substr(colon + 1);
      out += "-" + options.gguf_type + ".gguf";
    }
    const qtrain::ExportReport report = qtrain::run_export(source, out, options);
    qtrain::log::info("exported ", entry, " -> ", report.output);
  }
}

// The command line without --nproc (both "--nproc N" and "--nproc=N").
std::vector<std::string> without_nproc(const std::vector<std::string>& args) {
  std::vector<std::string> kept;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--nproc") {
      ++i;
    } else if (args[i].rfind("--nproc=", 0) != 0) {
      kept.push_back(args[i]);
    }
  }
  return kept;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> command_line(argv, argv + argc);
  // `qtrain data-check RECIPE` reads like a subcommand; it is the --data-check flag.
  std::vector<char*> args(argv, argv + argc);
  bool data_check = false;
  if (args.size() > 1 && std::strcmp(args[1], "data-check") == 0) {
    data_check = true;
    args.erase(args.begin() + 1);
  }
  std::string recipe_path;
  std::vector<std::string> overrides;
  bool dry_run = false;
  bool resume = false;
  int64_t stop_after = 0;
  int nproc = 1;
  CLI::App app{"Fine-tunes a 4-bit quantized LLM with LoRA / QA-LoRA adapters from a YAML recipe.",
               "qtrain"};
  app.add_option("recipe", recipe_path, "recipe file (recipes/*.yaml)")->required();
  app.add_option("overrides", overrides, "recipe overrides: section.key=value (training.lr=1e-4)");
  app.add_flag("--dry-run", dry_run,
               "print the resolved recipe and the memory estimate, then exit");
  app.add_flag("--resume", resume,
               "continue the run in output.dir from its newest checkpoint (fresh if it has none)");
  app.add_flag("--data-check", data_check,
               "tokenize the dataset as the recipe says and print counts, lengths, truncation "
               "and masking statistics, then exit (loads no weights)");
  app.add_option("--stop-after", stop_after,
                 "stop after this optimizer step as if pre-empted (checkpoint, exit 75)");
  app.add_option("--nproc", nproc,
                 "start this many data-parallel ranks on this machine (gloo on CPU, one GPU "
                 "each with nccl), as torchrun --nproc-per-node would")
      ->check(CLI::Range(1, 1024));
  return qtrain::run_cli("qtrain", app, static_cast<int>(args.size()), args.data(), [&] {
    const qtrain::Recipe recipe = qtrain::load_recipe(recipe_path, overrides);
    if (data_check) {
      std::fputs(qtrain::data_check_report(recipe).c_str(), stdout);
      return 0;
    }
    if (dry_run) {
      const auto estimate = qtrain::estimate_memory(recipe, qtrain::recipe_model_config(recipe));
      std::fputs(qtrain::describe_recipe(recipe, estimate).c_str(), stdout);
      return 0;
    }
    if (nproc > 1) {
      if (std::getenv("RANK") || std::getenv("WORLD_SIZE")) {
        qtrain::throw_error(qtrain::ErrorKind::kUsage,
                            "--nproc starts its own ranks; this process already is rank " +
                                std::string(std::getenv("RANK") ? std::getenv("RANK") : "?") +
                                " of a launched job (drop --nproc or unset RANK/WORLD_SIZE)");
      }
      return qtrain::launch_local_ranks(nproc, without_nproc(command_line), 30);
    }
    const qtrain::TrainResult result = qtrain::train(
        recipe, {.resume = resume, .command_line = command_line, .stop_after_step = stop_after});
    if (result.interrupted) return qtrain::kInterruptedExitCode;
    if (result.rank != 0) return 0;  // rank 0 reports and exports
    if (result.first_eval_loss > 0) {
      qtrain::log::info("held-out loss ", result.first_eval_loss, " -> ", result.last_eval_loss);
    }
    if (recipe.training.objective != "sft" && result.first_eval_loss > 0) {
      qtrain::log::info("held-out reward accuracy ", result.first_eval_reward_accuracy, " -> ",
                        result.last_eval_reward_accuracy);
    }
    qtrain::log::info("done: ", result.steps_done, " steps in ", result.run_dir);
    run_recipe_exports(recipe, result.run_dir);
    return 0;
  });
}

// qexport: a fine-tune out of qtrain, as a PEFT adapter, a merged HF checkpoint, bitsandbytes NF4,
// GGUF for llama.cpp or GPTQ INT4 (export/export_formats.h).
//
//   qexport RUN_OR_ADAPTER --format merged-bf16 [-o OUT] [--base DIR]
//           [--base-weights original|trained] [--gguf-type q4_k_m] [--max-shard-size 5GB]
//           [--overwrite] [--check | --no-check]
//
// OUT defaults to RUN_OR_ADAPTER/export/<format> (a .gguf file for gguf). After exporting a run,
// the held-out loss of the trained model and of the export read back are printed and written
// beside the export (tools/export_check.h: when it runs by default, and how).
#include "core/log.h"
#include "export/export_formats.h"
#include "export/export_source.h"
#include "tools/cli_main.h"
#include "tools/export_check.h"
#include "trainer/memory_plan.h"
#include "trainer/run_lock.h"

#include <sys/resource.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <string>

namespace {

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;  // KiB on Linux
}

}  // namespace

int main(int argc, char** argv) {
  std::string input, out, base, format_name = "merged-bf16", base_weights = "original";
  std::string shard_size = "5GB";
  qtrain::ExportOptions options;
  CLI::App app{
      "Exports a qtrain run or PEFT adapter: adapter, merged-bf16, merged-fp16, nf4, "
      "gguf, gptq-int4.",
      "qexport"};
  app.add_option("input", input, "a qtrain run directory or a PEFT adapter directory")->required();
  app.add_option("--format,-f", format_name,
                 "adapter | merged-bf16 | merged-fp16 | nf4 | gguf | gptq-int4")
      ->capture_default_str();
  app.add_option("--out,-o", out, "output directory (a file for gguf)");
  app.add_option("--base", base, "the base model directory (default: the run's or adapter's)");
  app.add_option("--base-weights", base_weights,
                 "original: the base's own weights (default); trained: the base quantized and "
                 "dequantized as in training")
      ->capture_default_str();
  app.add_option("--gguf-type", options.gguf_type, "f32 | f16 | q8_0 | q4_0 | q4_1 | q4_k_m")
      ->capture_default_str();
  app.add_option("--max-shard-size", shard_size, "largest safetensors shard, e.g. 5GB, 500MB")
      ->capture_default_str();
  app.add_flag("--overwrite", options.overwrite, "replace an existing output (once complete)");
  bool check = false, no_check = false;
  auto* check_flag = app.add_flag(
      "--check", check,
      "evaluate the trained model and the export on the run's held-out split (default: when "
      "the model is small enough to do it quickly)");
  app.add_flag("--no-check", no_check, "skip that evaluation")->excludes(check_flag);
  return qtrain::run_cli("qexport", app, argc, argv, [&] {
    const auto started = std::chrono::steady_clock::now();
    options.format = qtrain::export_format_from_name(format_name);
    options.base_weights = qtrain::base_weights_from_name(base_weights);
    options.max_shard_bytes = static_cast<uint64_t>(qtrain::parse_memory_size(shard_size));
    const qtrain::ExportCheckMode mode = check      ? qtrain::ExportCheckMode::kOn
                                         : no_check ? qtrain::ExportCheckMode::kOff
                                                    : qtrain::ExportCheckMode::kAuto;
    qtrain::preflight_export_check(input, mode);
    if (out.empty()) {
      out = input + "/export/" + format_name;
      if (options.format == qtrain::ExportFormat::kGguf) out += "-" + options.gguf_type + ".gguf";
    }
    // Reading a run that is still training is safe (checkpoints appear complete or not at all);
    // the user should know that the export is not of the finished run.
    if (const auto holder = qtrain::run_lock_holder(input)) {
      qtrain::log::warn(input, " is still training (qtrain pid ", holder->pid, " on ", holder->host,
                        "); exporting what it has written so far");
    }
    const qtrain::ExportSource source = qtrain::open_export_source(input, base);
    const qtrain::ExportReport report = qtrain::run_export(source, out, options);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::printf("qexport: %s -> %s\n", format_name.c_str(), report.output.c_str());
    if (!report.base_description.empty()) {
      std::printf("  base: %s\n", report.base_description.c_str());
    }
    std::printf("  adapted projections: %lld\n", static_cast<long long>(report.merged_modules));
    if (!report.details.empty()) std::printf("  %s\n", report.details.c_str());
    std::printf("  %.1f s, peak RSS %.0f MiB\n", seconds, peak_rss_mib());
    std::fflush(stdout);
    const qtrain::ExportCheck checked =
        qtrain::check_export(input, source, report.output, options, mode);
    if (mode != qtrain::ExportCheckMode::kOff) {
      std::printf("%s", qtrain::export_check_text(checked).c_str());
    }
    return 0;
  });
}

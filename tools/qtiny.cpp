// qtiny: writes a tiny random Llama-family model directory (HF format: config.json, safetensors,
// tokenizer files) for tests and demos, deterministic from a seed; and/or the tiny instruction
// dataset (Alpaca JSONL) that goes with it.
//
//   qtiny --arch llama --preset tiny --seed 0 --out DIR [--dtype float32] [--max-shard-bytes N]
//         [--overwrite] [--dataset PATH [--samples N]]
#include "core/error.h"
#include "data/tiny_instruct.h"
#include "models/config.h"
#include "models/hf_names.h"
#include "models/tiny_model.h"
#include "tools/cli_main.h"

#include <CLI/CLI.hpp>

#include <iostream>

namespace {

int64_t parameter_count(const qtrain::ModelConfig& config) {
  int64_t total = 0;
  for (const auto& spec : qtrain::hf_tensor_specs(config)) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    total += n;
  }
  return total;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : " | ") + item;
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  qtrain::TinyModelOptions options;
  std::string out;
  std::string dataset;
  int64_t samples = 1500;
  CLI::App app{
      "Writes a tiny random Llama-family model directory (HF format) and/or a tiny instruction "
      "dataset for tests and demos.",
      "qtiny"};
  app.add_option("--arch", options.arch, join(qtrain::tiny_model_archs()))->capture_default_str();
  app.add_option("--preset", options.preset, join(qtrain::tiny_model_presets()))
      ->capture_default_str();
  app.add_option("--seed", options.seed, "weights and dataset seed")->capture_default_str();
  app.add_option("--out", out, "model directory to write (must not exist or be empty)");
  app.add_option("--dataset", dataset,
                 "also (or only) write the tiny instruct dataset (Alpaca JSONL) to this file");
  app.add_option("--samples", samples, "samples in the dataset")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--dtype", options.dtype, "float32 | bfloat16 | float16")->capture_default_str();
  app.add_option("--max-shard-bytes", options.max_shard_bytes,
                 "shard the weights into files of at most N bytes (0: one file)")
      ->capture_default_str();
  app.add_flag("--overwrite", options.overwrite, "replace a non-empty output directory");
  return qtrain::run_cli("qtiny", app, argc, argv, [&] {
    if (out.empty() && dataset.empty()) {
      throw qtrain::Error(qtrain::ErrorKind::kUsage,
                          "nothing to write: give --out and/or --dataset");
    }
    // The model first: a bad --arch/--preset/--dtype or a non-empty --out must fail before
    // anything is written.
    if (!out.empty()) {
      try {
        qtrain::tiny_model_config(options);
      } catch (const qtrain::Error& e) {
        // A bad --arch, --preset or --dtype is a command-line mistake.
        throw qtrain::Error(qtrain::ErrorKind::kUsage, e.what());
      }
      qtrain::write_tiny_model(options, out);
      const auto config = qtrain::ModelConfig::from_file(out + "/config.json");
      std::cout << "qtiny: wrote " << out << " (" << options.arch << " " << options.preset << ", "
                << parameter_count(config) << " parameters, vocab " << config.vocab_size << ", "
                << config.torch_dtype << ")\n";
    }
    if (!dataset.empty()) {
      qtrain::write_tiny_instruct_dataset(dataset, samples, options.seed);
      std::cout << "qtiny: wrote " << dataset << " (" << samples << " samples, seed "
                << options.seed << ")\n";
    }
    return 0;
  });
}

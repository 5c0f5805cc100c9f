// qgen: a quick look at what a model says. Loads an HF model directory, encodes the prompt with
// its tokenizer.model, and streams a greedy or top-p continuation to stdout.
//
//   qgen MODEL_DIR --prompt "Once upon a time" [--max-new-tokens 64] [--temperature 0]
//        [--top-p 1.0] [--seed 0] [--dtype float32] [--device cpu]
#include "core/dtype.h"
#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"
#include "models/generate.h"
#include "models/hf_loader.h"
#include "tools/cli_main.h"

#include <c10/core/Device.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>

namespace {

// tokenizer_config.json's add_bos_token (Llama-style tokenizers default to true).
bool adds_bos(const std::string& dir) {
  std::ifstream in(dir + "/tokenizer_config.json");
  if (!in) return true;
  try {
    auto j = nlohmann::json::parse(in);
    if (j.contains("add_bos_token") && j["add_bos_token"].is_boolean()) return j["add_bos_token"];
  } catch (const nlohmann::json::exception&) {
    throw qtrain::Error(qtrain::ErrorKind::kFormat, "invalid JSON",
                        {.file = dir + "/tokenizer_config.json"});
  }
  return true;
}

int run(const std::string& dir, const std::string& prompt, qtrain::GenerateOptions options,
        const std::string& dtype, const std::string& device_name) {
  if (!std::filesystem::is_directory(dir)) {
    throw qtrain::Error(qtrain::ErrorKind::kIo, "no such model directory", {.file = dir});
  }
  const std::string tokenizer_path = dir + "/tokenizer.model";
  if (!std::filesystem::exists(tokenizer_path)) {
    throw qtrain::Error(qtrain::ErrorKind::kUnsupported,
                        "qgen needs a sentencepiece tokenizer.model (tokenizer.json support comes "
                        "with the data library)",
                        {.file = dir});
  }
  auto tokenizer = qtrain::SentencePieceTokenizer::load(tokenizer_path);
  c10::Device device(device_name);
  auto model = qtrain::load_causal_lm(
      dir, {.dtype = qtrain::scalar_type_from_name(dtype), .device = device});
  if (tokenizer.vocab_size() > model->config().vocab_size) {
    throw qtrain::Error(qtrain::ErrorKind::kShape,
                        "tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                            " pieces, the model only " + std::to_string(model->config().vocab_size),
                        {.file = tokenizer_path});
  }
  std::vector<int64_t> ids = tokenizer.encode(prompt, adds_bos(dir));
  if (ids.empty())
    throw qtrain::Error(qtrain::ErrorKind::kUsage, "the prompt encodes to no tokens");
  for (int64_t eos : model->config().eos_token_ids) options.stop_ids.push_back(eos);
  if (options.stop_ids.empty() && tokenizer.eos_id() >= 0)
    options.stop_ids.push_back(tokenizer.eos_id());

  std::cout << prompt << std::flush;
  std::vector<int64_t> produced;
  std::string printed;
  qtrain::generate(*model, ids, options, [&](int64_t token) {
    produced.push_back(token);
    // Decode the whole continuation and print what is new: pieces join differently than alone.
    const std::string text = tokenizer.decode(produced);
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::cout << text.substr(printed.size()) << std::flush;
      printed = text;
    }
  });
  std::cout << "\n";
  std::cerr << "qgen: " << produced.size() << " tokens\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, prompt, dtype = "float32", device = "cpu";
  qtrain::GenerateOptions options;
  CLI::App app{"Generates text from an HF-format model directory.", "qgen"};
  app.add_option("model", dir, "model directory (config.json, safetensors, tokenizer.model)")
      ->required();
  app.add_option("--prompt,-p", prompt, "text to continue")->required();
  app.add_option("--max-new-tokens,-n", options.max_new_tokens)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--temperature,-t", options.temperature, "0 = greedy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", options.top_p)->capture_default_str()->check(CLI::Range(1e-9, 1.0));
  app.add_option("--seed", options.seed)->capture_default_str();
  app.add_option("--dtype", dtype, "float32 | bfloat16 | float16")->capture_default_str();
  app.add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
  return qtrain::run_cli("qgen", app, argc, argv,
                         [&] { return run(dir, prompt, options, dtype, device); });
}

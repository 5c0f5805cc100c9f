// qgen: a quick look at what a model, or a fine-tune of it, says. Streams a greedy or top-p
// continuation to stdout and ends with "qgen: N tokens, X tok/s" on stderr.
//
//   qgen [MODEL] [--adapter DIR] (--prompt TEXT | --chat TEXT [--system TEXT])
//        [--template auto|chatml|llama3|llama2|mistral|alpaca|none] [--show-prompt]
//        [--precision bf16|fp32|fp16|int8|nf4|fp4|int4] [--max-new-tokens 64] [--temperature 0]
//        [--top-p 1.0] [--seed 0] [--dtype float32] [--device cpu]
//
// MODEL: an HF directory or builtin:<preset>. It may be left out when --adapter names the base: a
// qtrain run directory (recipe.yaml: its model.path) or a PEFT adapter with
// base_model_name_or_path; given, it replaces that base. A run directory may also stand in MODEL's
// place, so `qgen runs/tiny_qlora --chat "Name a colour."` means `qgen --adapter runs/...`.
//
// --adapter DIR: a PEFT adapter directory, or a run directory (its adapter/ is attached).
// --prompt TEXT: raw text to continue; stdout echoes it before the continuation.
// --chat TEXT: one user turn (after --system, if given) in the template and the assistant's
//   header, tokenized exactly as training put it before a response; stdout holds the reply only.
//   --template: auto (the model's tokenizer_config.json chat_template) by default, the recipe's
//   data.template for a run (alpaca recipes: TEXT is the instruction; completion / text: none).
// --precision: how the base's weights are stored; the forward pass computes in --dtype. Default
//   bf16, a run's quantization.type (none: its model.dtype), int4 for a QA-LoRA adapter (which
//   needs int4 with its qalora_group_size). A bitsandbytes 4-bit MODEL (`*-bnb-4bit`, a
//   `qexport --format nf4` export) loads at its stored precision; --precision naming another is
//   refused (models/stored_precision.h).
// --show-prompt: the formatted prompt, its token ids and the stop ids on stderr; -n 0 generates
//   nothing.
// Stops at EOS (config.json's and the tokenizer's) and, for chat templates, at the end-of-turn
// token (<|im_end|>, <|eot_id|>) when the tokenizer has it as one token.
#include "core/error.h"
#include "data/prompt_format.h"
#include "data/records.h"
#include "data/tokenizer.h"
#include "models/generate.h"
#include "models/llama.h"
#include "models/stored_precision.h"
#include "peft/peft_files.h"
#include "tools/cli_main.h"
#include "trainer/precision_model.h"
#include "trainer/recipe/recipe.h"
#include "trainer/training_data.h"
#include "trainer/training_model.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>

namespace {

namespace fs = std::filesystem;
using qtrain::ErrorKind;
using qtrain::throw_error;

struct Options {
  std::string model, adapter, prompt, chat, system, template_name, precision;
  std::string dtype = "float32", device = "cpu";
  bool show_prompt = false;
  qtrain::GenerateOptions generate;
};

// The base, the adapter and the defaults they imply.
struct Source {
  std::string model_dir;
  std::optional<qtrain::LoadedAdapter> adapter;
  int64_t qalora_group = 0;  // > 0: a QA-LoRA adapter
  std::string precision = "bf16";
  int64_t int4_group = 32;
  std::string chat_template = "auto";
  // A run's quantization section: how its base was quantized (skip_modules, blocksize, ...).
  std::optional<qtrain::QuantizationSection> quantization;
};

const std::vector<std::string>& template_names() {
  static const std::vector<std::string> names = {"auto",    "chatml", "llama3", "llama2",
                                                 "mistral", "alpaca", "none"};
  return names;
}

bool is_run_dir(const std::string& path) {
  return !path.empty() && fs::exists(fs::path(path) / "recipe.yaml");
}

std::string precision_of(const qtrain::Recipe& recipe) {
  if (recipe.quantization.type != "none") return recipe.quantization.type;
  if (recipe.model.dtype == "float32") return "fp32";
  return recipe.model.dtype == "float16" ? "fp16" : "bf16";
}

std::string template_of(const qtrain::Recipe& recipe) {
  if (recipe.data.format == "chat") return recipe.data.template_name;
  return recipe.data.format == "alpaca" ? "alpaca" : "none";
}

// Fills `source` from a run directory's recipe; returns the base it names.
std::string open_run(const std::string& run, Source& source, std::string* adapter_dir) {
  const qtrain::Recipe recipe = qtrain::load_recipe(run + "/recipe.yaml");
  *adapter_dir = run + "/adapter";
  if (!fs::exists(*adapter_dir + "/adapter_config.json")) {
    throw_error(ErrorKind::kIo, "the run has no adapter yet (no adapter/adapter_config.json)",
                {.file = run});
  }
  source.precision = precision_of(recipe);
  source.int4_group = recipe.quantization.group_size;
  source.quantization = recipe.quantization;
  source.chat_template = template_of(recipe);
  return recipe.model.path;
}

void open_adapter(const std::string& dir, Source& source) {
  source.adapter = qtrain::load_peft_adapter(dir);
  if (!source.adapter->use_qalora) return;
  source.qalora_group = source.adapter->qalora_group_size;
  source.precision = "int4";
  source.int4_group = source.qalora_group;
}

Source open_source(Options& o) {
  if (is_run_dir(o.model)) {
    if (!o.adapter.empty()) {
      throw_error(ErrorKind::kUsage, "MODEL " + o.model +
                                         " is a qtrain run; pass it alone or as --adapter, not "
                                         "with another --adapter");
    }
    o.adapter = o.model;
    o.model.clear();
  }
  Source source;
  std::string base = o.model, adapter_dir = o.adapter, named_base;
  if (is_run_dir(o.adapter)) named_base = open_run(o.adapter, source, &adapter_dir);
  if (!adapter_dir.empty()) {
    open_adapter(adapter_dir, source);
    if (named_base.empty()) named_base = source.adapter->base_model_name_or_path;
  }
  if (base.empty()) base = named_base;
  if (base.empty()) {
    throw_error(ErrorKind::kUsage,
                "no model: pass MODEL (an HF directory or builtin:<preset>), or --adapter naming "
                "a qtrain run or an adapter with base_model_name_or_path");
  }
  source.model_dir = qtrain::resolve_model_dir(base);
  return source;
}

std::string choose_precision(const Options& o, const Source& source) {
  const std::string precision = qtrain::precision_for_model_dir(source.model_dir, o.precision,
                                                                source.precision, "--precision");
  if (source.qalora_group > 0 && precision != "int4") {
    throw_error(ErrorKind::kUsage,
                "the adapter is QA-LoRA (qalora_group_size " + std::to_string(source.qalora_group) +
                    "): it runs on an int4 base only; use --precision int4 (the default for it), "
                    "not " +
                    precision);
  }
  return precision;
}

struct Prompt {
  std::string text;
  std::vector<int64_t> ids;
  std::string chat_template;  // the template used; "" for --prompt and --template none
};

// The record the data pipeline would read for this turn, with an empty response.
qtrain::Record chat_record(const Options& o, const std::string& format) {
  nlohmann::json value;
  if (format == "alpaca") {
    value = {{"instruction", o.chat}, {"output", ""}};
  } else {
    nlohmann::json messages = nlohmann::json::array();
    if (!o.system.empty()) messages.push_back({{"role", "system"}, {"content", o.system}});
    messages.push_back({{"role", "user"}, {"content", o.chat}});
    messages.push_back({{"role", "assistant"}, {"content", ""}});
    value = {{"messages", messages}};
  }
  return {value, "--chat", 1};
}

// What data/examples.cpp puts before the response: [BOS] [template <s>] prompt text.
Prompt build_chat_prompt(const Options& o, const Source& source,
                         const qtrain::Tokenizer& tokenizer) {
  std::string name = o.template_name.empty() ? source.chat_template : o.template_name;
  if (name == "auto") name = qtrain::model_chat_template(source.model_dir);
  const bool is_chat = name != "alpaca" && name != "none";
  if (!o.system.empty() && (!is_chat || name == "mistral")) {
    const std::string needs = "--system needs a template with a system role (chatml, llama3, ";
    throw_error(ErrorKind::kUsage, needs + "llama2), not " + name);
  }
  Prompt prompt{o.chat, {}, is_chat ? name : ""};
  if (tokenizer.add_bos_default() && tokenizer.bos_id() >= 0)
    prompt.ids.push_back(tokenizer.bos_id());
  if (name != "none") {
    const std::string format = is_chat ? "chat" : "alpaca";
    const auto turns = qtrain::format_record(chat_record(o, format), format, {}, name);
    prompt.text = turns.back().prompt;
    if (turns.back().bos_before_prompt) prompt.ids.push_back(tokenizer.bos_id());
  }
  const auto text_ids = tokenizer.encode(prompt.text, false, false);
  prompt.ids.insert(prompt.ids.end(), text_ids.begin(), text_ids.end());
  return prompt;
}

Prompt build_prompt(const Options& o, const Source& source, const qtrain::Tokenizer& tokenizer) {
  if (o.chat.empty()) {
    return {o.prompt, tokenizer.encode(o.prompt, tokenizer.add_bos_default(), false), ""};
  }
  return build_chat_prompt(o, source, tokenizer);
}

// EOS ids, and the template's end-of-turn token when it is a single id.
std::vector<int64_t> stop_ids(const qtrain::CausalLM& model, const qtrain::Tokenizer& tokenizer,
                              const std::string& chat_template) {
  std::vector<int64_t> ids = model.config().eos_token_ids;
  if (tokenizer.eos_id() >= 0) ids.push_back(tokenizer.eos_id());
  const char* end_of_turn = chat_template == "chatml"   ? "<|im_end|>"
                            : chat_template == "llama3" ? "<|eot_id|>"
                                                        : nullptr;
  if (end_of_turn) {
    const auto turn_ids = tokenizer.encode(end_of_turn, false, false);
    if (turn_ids.size() == 1) ids.push_back(turn_ids[0]);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

void show_ids(const std::string& what, const std::vector<int64_t>& ids) {
  std::cerr << "qgen: " << what << ":";
  for (int64_t id : ids) std::cerr << " " << id;
  std::cerr << "\n";
}

void check_vocab(const qtrain::Tokenizer& tokenizer, const qtrain::CausalLM& model,
                 const std::string& dir) {
  if (tokenizer.vocab_size() <= model.config().vocab_size) return;
  throw_error(ErrorKind::kShape,
              "tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                  " tokens, the model only " + std::to_string(model.config().vocab_size),
              {.file = dir});
}

// Streams the continuation; returns the number of new tokens.
size_t stream(qtrain::CausalLM& model, const qtrain::Tokenizer& tokenizer, const Prompt& prompt,
              const qtrain::GenerateOptions& options) {
  std::vector<int64_t> produced;
  std::string printed;
  qtrain::generate(model, prompt.ids, options, [&](int64_t token) {
    produced.push_back(token);
    // Decode the whole continuation and print what is new: pieces join differently than alone.
    const std::string text = tokenizer.decode(produced);
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::cout << text.substr(printed.size()) << std::flush;
      printed = text;
    }
  });
  return produced.size();
}

int run(Options o) {
  if (o.prompt.empty() == o.chat.empty()) {
    throw_error(ErrorKind::kUsage, "pass one of --prompt TEXT (raw continuation) or --chat TEXT");
  }
  const c10::Device device = qtrain::resolve_device(o.device);
  const at::ScalarType compute = qtrain::resolve_dtype(o.dtype, "--dtype");
  Source source = open_source(o);
  const std::string precision = choose_precision(o, source);
  const auto tokenizer = qtrain::load_tokenizer(source.model_dir);
  const Prompt prompt = build_prompt(o, source, *tokenizer);
  if (prompt.ids.empty()) throw_error(ErrorKind::kUsage, "the prompt encodes to no tokens");
  if (o.show_prompt) {
    std::cerr << "qgen: prompt (" << prompt.ids.size() << " tokens):\n" << prompt.text << "\n";
    show_ids("prompt ids", prompt.ids);
  }

  qtrain::PrecisionOptions built_as =
      source.quantization ? qtrain::precision_options_of(*source.quantization, precision)
                          : qtrain::PrecisionOptions{};
  built_as.int4_group_size = source.int4_group;
  auto model =
      qtrain::load_model_at_precision(source.model_dir, precision, compute, device, built_as).model;
  if (source.adapter) qtrain::attach_peft_adapter(*model, *source.adapter);
  check_vocab(*tokenizer, *model, source.model_dir);
  o.generate.stop_ids = stop_ids(*model, *tokenizer, prompt.chat_template);
  o.generate.vocab_limit = tokenizer->vocab_size();
  if (o.show_prompt) show_ids("stop ids", o.generate.stop_ids);

  if (o.chat.empty()) std::cout << prompt.text << std::flush;
  const auto start = std::chrono::steady_clock::now();
  const size_t produced =
      o.generate.max_new_tokens > 0 ? stream(*model, *tokenizer, prompt, o.generate) : 0;
  const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
  std::cout << "\n" << std::flush;
  std::fprintf(stderr, "qgen: %zu tokens, %.1f tok/s\n", produced,
               produced > 0 ? produced / seconds.count() : 0.0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Generates text from a model, or a fine-tune of it.", "qgen"};
  app.add_option("model", o.model,
                 "HF model directory or builtin:<preset> (or a qtrain run directory); optional "
                 "when --adapter names the base");
  app.add_option("--adapter,-a", o.adapter, "PEFT adapter directory or qtrain run directory");
  auto* prompt = app.add_option("--prompt,-p", o.prompt, "raw text to continue");
  auto* chat = app.add_option("--chat,-c", o.chat, "one user message, in the chat template");
  prompt->excludes(chat);
  app.add_option("--system", o.system, "system message for --chat")->needs(chat);
  app.add_option("--template", o.template_name,
                 "for --chat: auto | chatml | llama3 | llama2 | mistral | alpaca | none (default: "
                 "the run's data.template, else auto)")
      ->check(CLI::IsMember(template_names()))
      ->needs(chat);
  app.add_flag("--show-prompt", o.show_prompt, "print the formatted prompt and its ids to stderr");
  app.add_option("--precision", o.precision,
                 "base weights: fp32 | bf16 | fp16 | int8 | nf4 | fp4 | int4 (default: bf16, the "
                 "run's quantization, int4 for QA-LoRA; a bitsandbytes 4-bit MODEL: its stored "
                 "precision)")
      ->check(CLI::IsMember(qtrain::model_precisions()));
  app.add_option("--max-new-tokens,-n", o.generate.max_new_tokens)
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--temperature,-t", o.generate.temperature, "0 = greedy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", o.generate.top_p)->capture_default_str()->check(CLI::Range(1e-9, 1.0));
  app.add_option("--seed", o.generate.seed)->capture_default_str();
  app.add_option("--dtype", o.dtype, "compute dtype: float32 | bfloat16 | float16")
      ->capture_default_str();
  app.add_option("--device", o.device, "cpu | cuda | cuda:N | auto")->capture_default_str();
  return qtrain::run_cli("qgen", app, argc, argv, [&] { return run(o); });
}

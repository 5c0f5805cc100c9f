// docs/errors.md against the real tools: every case below starts from good inputs, breaks one
// thing, runs one of qtrain, qexport, qeval, qgen, qtiny, qmem on it, and checks the exit code
// and the error line against the catalogue row it names (the backticked message turned into a
// regular expression: <placeholders> match anything). Some cases also check that the failed
// command left what already existed untouched. A case with a `finding` is a known code bug: it is
// skipped (and listed in the summary) until the code is fixed and the string removed.
//
// Run a subset with --gtest_filter='Docs/*REC_*' (only the selected cases are set up and run).
#include "data/byte_level.h"
#include "data/tiny_instruct.h"
#include "formats/safetensors/safetensors.h"
#include "tests/support/test_support.h"
#include "trainer/run_lock.h"
#include "trainer/training_model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
namespace t = qtrain::testing;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// The catalogue

struct DocRow {
  int exit_code = -1;
  std::string literal;  // the first backticked message of the row
  std::string pattern;  // `literal` as an ECMAScript regex
};

std::string regex_escape(const std::string& text) {
  static const std::string special = R"(\^$.|?*+()[]{}/)";
  std::string out;
  for (char c : text) {
    if (special.find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

// `<placeholder>` (a letter after '<') -> `.*`; `[ optional words]` (a bracket opening with a
// space) -> optional; everything else literal.
std::string message_pattern(const std::string& literal) {
  std::string out;
  size_t i = 0;
  while (i < literal.size()) {
    const char c = literal[i];
    if (c == '<' && i + 1 < literal.size() &&
        std::isalpha(static_cast<unsigned char>(literal[i + 1]))) {
      // A placeholder starts with a letter and holds no other '<' (`1 <= stride <= n` is text).
      const size_t close = literal.find('>', i);
      const size_t reopen = literal.find('<', i + 1);
      if (close != std::string::npos && (reopen == std::string::npos || reopen > close)) {
        out += ".*";
        i = close + 1;
        continue;
      }
    }
    if (c == '[' && i + 1 < literal.size() && literal[i + 1] == ' ') {
      const size_t close = literal.find(']', i);
      if (close != std::string::npos) {
        out += "(?:" + message_pattern(literal.substr(i + 1, close - i - 1)) + ")?";
        i = close + 1;
        continue;
      }
    }
    out += regex_escape(std::string(1, c));
    ++i;
  }
  return out;
}

// Rows `| ID | exit | `message` ... |` of every table.
std::map<std::string, DocRow> parse_catalogue(const std::string& path) {
  std::map<std::string, DocRow> rows;
  std::ifstream in(path);
  static const std::regex row_start(R"(^\| ([A-Z]+-[0-9]+) \| ([0-9]+) \| (.*)$)");
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (!std::regex_match(line, m, row_start)) continue;
    const std::string rest = m[3].str();
    const size_t open = rest.find('`');
    if (open == std::string::npos) continue;
    const size_t close = rest.find('`', open + 1);
    if (close == std::string::npos) continue;
    std::string literal;
    const std::string raw = rest.substr(open + 1, close - open - 1);
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '\\' && i + 1 < raw.size() && raw[i + 1] == '|') continue;  // table escape
      literal += raw[i];
    }
    DocRow row;
    row.exit_code = std::stoi(m[2].str());
    row.literal = literal;
    row.pattern = message_pattern(literal);
    rows[m[1].str()] = row;
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Shared fixtures: made once for the whole suite.

struct Fixtures {
  t::ScratchDir* scratch = nullptr;
  std::string root;      // scratch path
  std::string model;     // a copy of builtin:micro (SentencePiece tokenizer)
  std::string bpe;       // the same weights with a byte-level BPE tokenizer.json
  std::string data;      // tiny instruct dataset (alpaca JSONL)
  std::string eval_txt;  // plain text for qeval
  std::string recipe_text;
  std::string run;        // a finished two-step run: checkpoints/step-1, step-2 and adapter/
  std::string run_error;  // why the run could not be made
  std::string nf4;        // the run merged and saved as a bitsandbytes NF4 checkpoint
  std::map<std::string, DocRow> catalogue;
};
Fixtures* g = nullptr;

std::string tool_path(const std::string& tool) {
  return t::binary_dir() + "/tools/" + tool;
}

std::string cache_dir() {
  return t::binary_dir() + "/test-cache";
}

// A Qwen-style byte-level BPE tokenizer.json (ids 0..255 are the bytes, no BOS) with ChatML's
// special tokens, replacing the model's SentencePiece one.
void use_bpe_tokenizer(const std::string& dir) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_chars()[b]] = b;
  vocab["he"] = 256;
  vocab["ll"] = 257;
  json added = json::array();
  int64_t id = 258;
  for (const char* token : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    added.push_back({{"id", id++},
                     {"content", token},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"special", true},
                     {"normalized", false}});
  }
  const ojson tokenizer = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", R"( ?\p{L}+| ?\p{N}|\s+(?!\S)|\s+|[^\s\p{L}\p{N}]+)"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"vocab", vocab}, {"merges", {"h e", "l l"}}}}};
  const json config = {{"bos_token", nullptr},
                       {"eos_token", "<|im_end|>"},
                       {"pad_token", "<|endoftext|>"},
                       {"chat_template",
                        "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + "
                        "message.content + '<|im_end|>' + '\\n' }}{%- endfor %}"}};
  fs::remove(dir + "/tokenizer.model");
  fs::remove(dir + "/special_tokens_map.json");
  t::write_file(dir + "/tokenizer.json", tokenizer.dump(1));
  t::write_file(dir + "/tokenizer_config.json", config.dump(1));
}

// Pads the BPE tokenizer.json to 401 tokens (fillers up to id 397, the three special tokens
// after them), more than the model's 384 embeddings.
void grow_bpe_vocab(const std::string& path);

// The good recipe every recipe case starts from (output.dir relative: each case runs in its own
// directory).
std::string base_recipe(const std::string& model, const std::string& data) {
  return "model:\n"
         "  path: " +
         model +
         "\n"
         "  dtype: float32\n"
         "  device: cpu\n"
         "quantization:\n"
         "  type: nf4\n"
         "adapter:\n"
         "  type: lora\n"
         "  r: 4\n"
         "  alpha: 8\n"
         "  dropout: 0.0\n"
         "  dtype: float32\n"
         "data:\n"
         "  path: " +
         data +
         "\n"
         "  max_seq_len: 256\n"
         "  eval_fraction: 0.0\n"
         "training:\n"
         "  micro_batch_size: 4\n"
         "  grad_accum_steps: 1\n"
         "  max_steps: 2\n"
         "  lr: 1.0e-3\n"
         "  warmup_steps: 0\n"
         "  eval_every: 0\n"
         "  optimizer: adamw\n"
         "  seed: 1\n"
         "output:\n"
         "  dir: run\n"
         "  save_every: 1\n"
         "  keep_last: 2\n"
         "  tensorboard: false\n";
}

// ---------------------------------------------------------------------------------------------
// One case

struct Env {
  std::string dir;                  // the case's own directory, the tool's working directory
  std::vector<std::string> expect;  // more substrings the error line must hold
  std::string env;                  // extra VAR=value assignments for the command
  // Files (relative to dir) with the content they must still have after the failed command.
  std::map<std::string, std::string> keep;
  std::string path(const std::string& relative) const { return dir + "/" + relative; }
};

struct Case {
  std::string id;    // catalogue ID
  std::string name;  // what is broken (unique per ID)
  std::string tool;
  std::function<std::string(Env&)> setup;  // builds the bad input, returns the arguments
  std::vector<std::string> expect = {};    // substrings the error line must hold
  std::string finding = {};                // non-empty: a known code bug, the case is skipped
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.id << " (" << c.name << ")";
}

struct Result {
  int code = -1;
  std::string out, err;
};

Result run_tool(const std::string& tool, const std::string& args, const Env& env) {
  const std::string out_file = env.dir + ".stdout";
  const std::string err_file = env.dir + ".stderr";
  const std::string command = "cd '" + env.dir + "' && OMP_NUM_THREADS=1 QTRAIN_CACHE_DIR='" +
                              cache_dir() + "' " + env.env + " '" + tool_path(tool) + "' " + args +
                              " >'" + out_file + "' 2>'" + err_file + "' </dev/null";
  const int status = std::system(command.c_str());
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = fs::exists(out_file) ? t::read_file(out_file) : "";
  r.err = fs::exists(err_file) ? t::read_file(err_file) : "";
  return r;
}

// ---------------------------------------------------------------------------------------------
// Setup helpers

void write(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  t::write_file(path, text);
}

std::string replace_once(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  if (at == std::string::npos) throw std::runtime_error("test setup: '" + from + "' not found");
  return text.replace(at, from.size(), to);
}

int line_of(const std::string& text, const std::string& needle) {
  const size_t at = text.find(needle);
  if (at == std::string::npos) throw std::runtime_error("test setup: '" + needle + "' not found");
  return 1 + static_cast<int>(std::count(text.begin(), text.begin() + at, '\n'));
}

// A directory where a file is expected (a user's mkdir or a botched copy).
void replace_with_directory(const std::string& path) {
  fs::remove(path);
  fs::create_directories(path);
}

void copy_tree(const std::string& from, const std::string& to) {
  fs::create_directories(fs::path(to).parent_path());
  fs::copy(from, to, fs::copy_options::recursive);
}

std::string model(Env& e, const std::string& name = "model") {
  copy_tree(g->model, e.path(name));
  return name;
}

std::string bpe_model(Env& e) {
  copy_tree(g->bpe, e.path("bpe"));
  return "bpe";
}

std::string run_copy(Env& e) {
  if (g->run.empty()) throw std::runtime_error("the fixture run is missing: " + g->run_error);
  copy_tree(g->run, e.path("run"));
  return "run";
}

std::string adapter_copy(Env& e) {
  if (g->run.empty()) throw std::runtime_error("the fixture run is missing: " + g->run_error);
  copy_tree(g->run + "/adapter", e.path("adapter"));
  return "adapter";
}

// Takes the run directory's lock in this test process and keeps it until the process ends, as a
// qtrain still training there would.
void hold_run_lock(const std::string& run_dir) {
  static std::mutex mutex;
  static std::vector<std::unique_ptr<RunLock>> held;
  std::lock_guard<std::mutex> guard(mutex);
  held.push_back(RunLock::acquire(run_dir));
}

std::string nf4_model(Env& e) {
  if (g->nf4.empty())
    throw std::runtime_error("the fixture NF4 export is missing: " + g->run_error);
  copy_tree(g->nf4, e.path("nf4"));
  return "nf4";
}

// The good recipe with `from` replaced by `to` (each pair in turn), written to recipe.yaml.
std::string recipe(Env& e, const std::vector<std::pair<std::string, std::string>>& edits = {}) {
  std::string text = g->recipe_text;
  for (const auto& [from, to] : edits) text = replace_once(text, from, to);
  write(e.path("recipe.yaml"), text);
  return "recipe.yaml";
}

// As recipe(), and expects the error to name recipe.yaml at the line holding `needle`.
std::string recipe_at(Env& e, const std::vector<std::pair<std::string, std::string>>& edits,
                      const std::string& needle) {
  const std::string name = recipe(e, edits);
  e.expect.push_back("recipe.yaml:" + std::to_string(line_of(t::read_file(e.path(name)), needle)) +
                     ": ");
  return name;
}

ojson read_json(const std::string& path) {
  return ojson::parse(t::read_file(path));
}

void edit_json(const std::string& path, const std::function<void(ojson&)>& edit) {
  ojson j = read_json(path);
  edit(j);
  t::write_file(path, j.dump(2));
}

void grow_bpe_vocab(const std::string& path) {
  edit_json(path, [](ojson& j) {
    int64_t id = 258;
    for (int i = 0; id < 398; ++i) j["model"]["vocab"]["x" + std::to_string(i)] = id++;
    for (auto& token : j["added_tokens"]) token["id"] = id++;
  });
}

// qeval on a model directory: the quickest full load of config, weights and tokenizer.
std::string eval_args(const std::string& model_dir, const std::string& extra = "") {
  return model_dir + " --data " + g->eval_txt +
         " --precision fp32 --max-len 16 --stride 16 --max-tokens 24 " + extra;
}

// The newest checkpoint of a copied run, relative to the case directory.
std::string latest_checkpoint(Env& e, const std::string& run) {
  std::string name = t::read_file(e.path(run + "/checkpoints/latest"));
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  return run + "/checkpoints/" + name;
}

// Every regular file under `relative` must be unchanged after the command.
void keep_tree(Env& e, const std::string& relative) {
  for (const auto& entry : fs::recursive_directory_iterator(e.path(relative))) {
    if (!entry.is_regular_file()) continue;
    const std::string rel = fs::relative(entry.path(), e.dir).string();
    e.keep[rel] = t::read_file(entry.path().string());
  }
}

// Raw safetensors: 8-byte little-endian header length, JSON header, data buffer.
struct RawSafetensors {
  std::string header;
  std::string data;
};

RawSafetensors read_raw(const std::string& path) {
  const std::string bytes = t::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return {bytes.substr(8, n), bytes.substr(8 + n)};
}

std::string le64(uint64_t n) {
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out;
}

void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  t::write_file(path, le64(header.size()) + header + data);
}

// Edits the header JSON of a safetensors file, keeping its data buffer.
void edit_header(const std::string& path, const std::function<void(ojson&)>& edit) {
  RawSafetensors raw = read_raw(path);
  ojson header = ojson::parse(raw.header);
  edit(header);
  write_raw(path, header.dump(), raw.data);
}

// Rewrites a safetensors file through the library after changing its tensors.
void edit_tensors(
    const std::string& path,
    const std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>& edit) {
  NamedTensors tensors;
  {
    auto file = SafetensorsFile::open(path);
    for (const auto& name : file->names()) tensors.emplace_back(name, file->tensor(name).clone());
  }
  edit(tensors);
  fs::remove(path);
  write_safetensors(path, tensors);
}

// Turns model/model.safetensors into model-00001-of-00001.safetensors + an index (all tensors in
// the one shard), then lets `edit` change the index.
void shard_model(Env& e, const std::string& dir, const std::function<void(ojson&)>& edit) {
  const std::string shard = "model-00001-of-00001.safetensors";
  fs::rename(e.path(dir + "/model.safetensors"), e.path(dir + "/" + shard));
  ojson index = {{"metadata", {{"total_size", 0}}}, {"weight_map", ojson::object()}};
  auto file = SafetensorsFile::open(e.path(dir + "/" + shard));
  for (const auto& name : file->names()) index["weight_map"][name] = shard;
  edit(index);
  t::write_file(e.path(dir + "/model.safetensors.index.json"), index.dump(2));
}

void remove_tensor(NamedTensors& tensors, const std::string& name) {
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [&](const auto& entry) { return entry.first == name; }),
                tensors.end());
}

// Replaces the bytes of a bitsandbytes quant_state entry (a uint8 tensor of JSON text).
void set_quant_state(NamedTensors& tensors, const std::string& weight, const std::string& text) {
  for (auto& [name, value] : tensors) {
    if (name != weight + ".quant_state.bitsandbytes__nf4") continue;
    value = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
    std::memcpy(value.data_ptr<uint8_t>(), text.data(), text.size());
  }
}

std::string quant_state_text(const NamedTensors& tensors, const std::string& weight) {
  for (const auto& [name, value] : tensors) {
    if (name != weight + ".quant_state.bitsandbytes__nf4") continue;
    const at::Tensor bytes = value.contiguous();
    return std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), bytes.numel());
  }
  throw std::runtime_error("test setup: no quant_state for " + weight);
}

const std::string kQProj = "model.layers.0.self_attn.q_proj.weight";
const std::string kAdapterA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const std::string kAdapterB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

// A fresh dataset file in the case directory, one line per entry.
std::string jsonl(Env& e, const std::vector<std::string>& lines,
                  const std::string& name = "bad.jsonl") {
  std::string text;
  for (const auto& line : lines) text += line + "\n";
  write(e.path(name), text);
  return name;
}

const std::string kGoodAlpaca = R"({"instruction": "Say hi.", "input": "", "output": "hi"})";

// `qtrain data-check` on the good recipe with extra overrides.
std::string data_check(Env& e, const std::string& overrides) {
  return "data-check " + recipe(e) + " " + overrides;
}

// ---------------------------------------------------------------------------------------------
// The cases

void add(std::vector<Case>& cases, std::string id, std::string name, std::string tool,
         std::function<std::string(Env&)> setup, std::vector<std::string> expect = {},
         std::string finding = "") {
  cases.push_back({std::move(id), std::move(name), std::move(tool), std::move(setup),
                   std::move(expect), std::move(finding)});
}

std::vector<Case> all_cases() {
  std::vector<Case> c;

  // ---- 2.1 CLI11 parse errors ----------------------------------------------------------------
  add(c, "CLI-01", "qtrain_no_recipe", "qtrain", [](Env&) { return std::string(); },
      {"recipe is required"});
  add(c, "CLI-01", "qexport_no_input", "qexport", [](Env&) { return std::string("-f adapter"); },
      {"input is required"});
  add(c, "CLI-02", "unknown_option", "qtrain", [](Env& e) { return recipe(e) + " --dry-rum"; },
      {"--dry-rum"});
  add(c, "CLI-02", "qtiny_extra_positional", "qtiny",
      [](Env&) { return std::string("extra --dataset d.jsonl"); }, {"extra"});
  add(c, "CLI-03", "nproc_zero", "qtrain", [](Env& e) { return recipe(e) + " --nproc 0"; },
      {"--nproc"});
  add(c, "CLI-03", "top_p_zero", "qgen", [](Env& e) { return model(e) + " --prompt hi --top-p 0"; },
      {"--top-p"});
  add(c, "CLI-04", "template", "qgen",
      [](Env& e) { return model(e) + " --chat hi --template vicuna"; }, {"--template"});
  add(c, "CLI-05", "stop_after", "qtrain", [](Env& e) { return recipe(e) + " --stop-after soon"; },
      {"--stop-after", "soon"});
  add(c, "CLI-06", "missing_value", "qeval", [](Env& e) { return model(e) + " --data"; },
      {"--data"});
  add(c, "CLI-07", "system_without_chat", "qgen",
      [](Env& e) { return model(e) + " --prompt hi --system be nice"; }, {"--system"});
  add(c, "CLI-08", "prompt_and_chat", "qgen",
      [](Env& e) { return model(e) + " --prompt hi --chat hi"; });

  // ---- 2.2 Tool-level usage errors ------------------------------------------------------------
  add(c, "CLI-10", "nproc_under_rank", "qtrain", [](Env& e) {
    e.env = "RANK=0 WORLD_SIZE=1";
    return recipe(e) + " --nproc 2";
  });
  add(c, "CLI-11", "gpu_mem", "qmem", [](Env& e) { return recipe(e) + " --gpu-mem lots"; },
      {"'lots'"});
  add(c, "CLI-11", "max_shard_size", "qexport",
      [](Env& e) { return adapter_copy(e) + " -f adapter -o out --max-shard-size 5XB"; },
      {"'5XB'"});
  add(c, "CLI-12", "format", "qexport", [](Env& e) { return adapter_copy(e) + " -f onnx -o out"; },
      {"'onnx'"});
  c.push_back(
      {"CLI-13",
       "base_weights",
       "qexport",
       [](Env& e) { return adapter_copy(e) + " -f merged-bf16 --base-weights mine -o out"; },
       {"'mine'"}});
  add(c, "CLI-14", "gguf_type", "qexport",
      [](Env& e) { return adapter_copy(e) + " -f gguf --gguf-type q9_9 -o out.gguf"; }, {"'q9_9'"});
  add(c, "CLI-15", "data_and_recipe", "qeval",
      [](Env& e) { return model(e) + " --data x.txt --recipe " + recipe(e); });
  add(c, "CLI-16", "no_model", "qeval", [](Env&) { return "--data " + g->eval_txt; });
  add(c, "CLI-17", "precision", "qeval",
      [](Env& e) { return model(e) + " --data " + g->eval_txt + " --precision fp8"; }, {"'fp8'"});
  add(c, "CLI-18", "max_len", "qeval",
      [](Env& e) { return model(e) + " --data " + g->eval_txt + " --max-len 1 --stride 1"; });
  add(c, "CLI-19", "no_prompt", "qgen", [](Env& e) { return model(e); });
  add(c, "CLI-20", "run_and_adapter", "qgen",
      [](Env& e) { return run_copy(e) + " --adapter " + adapter_copy(e) + " --prompt hi"; });
  add(c, "CLI-21", "no_model", "qgen", [](Env&) { return std::string("--prompt hi"); });
  add(c, "CLI-22", "qalora_precision", "qgen", [](Env& e) {
    const std::string a = adapter_copy(e);
    edit_json(e.path(a + "/adapter_config.json"), [](ojson& j) {
      j["use_qalora"] = true;
      j["qalora_group_size"] = 32;
    });
    return model(e) + " --adapter " + a + " --precision bf16 --prompt hi -n 1";
  });
  add(c, "CLI-23", "system_mistral", "qgen",
      [](Env& e) { return model(e) + " --chat hi --system be --template mistral -n 1"; });
  add(c, "CLI-25", "too_many_tokens", "qgen",
      [](Env& e) { return model(e) + " --prompt hi -n 5000"; }, {"(2048)"});
  add(c, "CLI-26", "nothing", "qtiny", [](Env&) { return std::string("--seed 1"); });
  add(c, "CLI-27", "arch", "qtiny", [](Env&) { return std::string("--out m --arch gpt2"); },
      {"'gpt2'"});
  add(c, "CLI-28", "preset", "qtiny", [](Env&) { return std::string("--out m --preset huge"); },
      {"'huge'"});
  add(c, "CLI-29", "dtype_keeps_dataset", "qtiny",
      [](Env& e) {
        write(e.path("d.jsonl"), "old dataset\n");
        e.keep["d.jsonl"] = "old dataset\n";
        return std::string("--out m --dtype int8 --dataset d.jsonl");
      },
      {"'int8'"});

  // ---- 3.1 Reading the recipe ---------------------------------------------------------------
  add(c, "REC-01", "directory", "qtrain",
      [](Env& e) {
        fs::create_directories(e.path("r.yaml"));
        return std::string("r.yaml --dry-run");
      },
      {"r.yaml: "});
  add(c, "REC-02", "missing", "qmem", [](Env&) { return std::string("nope.yaml"); },
      {"nope.yaml: "});
  add(c, "REC-04", "tab_indent", "qtrain", [](Env& e) {
    return recipe_at(e, {{"  lr: 1.0e-3\n", "\tlr: 1.0e-3\n"}}, "\tlr") + " --dry-run";
  });
  add(c, "REC-04", "unclosed_flow", "qmem", [](Env& e) {
    // yaml-cpp marks the line where it gave up looking for the ']'.
    return recipe_at(e, {{"  seed: 1\n", "  seed: [1\n"}}, "output:");
  });
  add(c, "REC-05", "list", "qtrain",
      [](Env& e) {
        write(e.path("r.yaml"), "- model\n- data\n");
        return std::string("r.yaml --dry-run");
      },
      {"r.yaml:1: ", "a list"});
  add(c, "REC-06", "not_utf8", "qtrain",
      [](Env& e) {
        write(e.path("r.yaml"), "model:\n  path: \"caf\xe9\"\n");
        return std::string("r.yaml --dry-run");
      },
      {"r.yaml:2: "});
  add(c, "REC-07", "control_character", "qtrain", [](Env& e) {
    // A BEL in a comment: YAML text holds printable characters only, comments included.
    return recipe_at(e, {{"output:\n", "output:  # done\x07\n"}}, "output:") + " --dry-run";
  });
  add(c, "REC-08", "escaped_control_character", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  dir: run\n", "  dir: \"run\\0\"\n"}}, "  dir:") + " --dry-run";
      },
      {"field 'output.dir'", "U+0000 (character 4)"});
  add(c, "REC-09", "latin1_escape", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  dir: run\n", "  dir: \"run\\_1\"\n"}}, "  dir:") + " --dry-run";
      },
      {"field 'output.dir'"});
  add(c, "REC-111", "deep_flow", "qtrain",
      [](Env& e) {
        // 100,000 levels: past yaml-cpp's own limit of 500, refused by the scan before it.
        const std::string deep = std::string(100'000, '[') + "1" + std::string(100'000, ']');
        return recipe_at(e, {{"  seed: 1\n", "  seed: " + deep + "\n"}}, "  seed:") + " --dry-run";
      },
      {"more than 64 levels"});
  add(c, "REC-111", "deep_block", "qmem", [](Env& e) {
    std::string deep = "  skip_modules:\n";
    for (int i = 0; i < 100; ++i) deep += std::string(4 + i, ' ') + "-\n";
    // The section, the key and 63 list levels: the 63rd "-" line is the 65th level.
    const std::string name = recipe(e, {{"quantization:\n", "quantization:\n" + deep}});
    const int line = line_of(t::read_file(e.path(name)), "  skip_modules:") + 63;
    e.expect.push_back("recipe.yaml:" + std::to_string(line) + ": ");
    return name;
  });
  add(c, "REC-112", "second_document", "qtrain", [](Env& e) {
    return recipe_at(e, {{"output:\n", "---\noutput:\n"}}, "---") + " --dry-run";
  });
  add(c, "REC-113", "alias_bomb", "qtrain",
      [](Env& e) {
        // The issue's reproduction, scaled to fit the 1 MiB file cap: 300 uses of a 1000 KB
        // string would be 293 MiB of module names.
        std::string list = "[&big " + std::string(1'000'000, 'x');
        for (int i = 0; i < 299; ++i) list += ", *big";
        return recipe_at(e, {{"  type: nf4\n", "  type: nf4\n  skip_modules: " + list + "]\n"}},
                         "  skip_modules:") +
               " --dry-run";
      },
      {"field 'quantization.skip_modules'", "16 MiB"});
  // ---- 3.2 Sections and keys
  add(c, "REC-10", "misspelt_section", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"training:\n", "trainig:\n"}}, "trainig:") + " --dry-run";
      },
      {"field 'trainig'", "'training'"});
  add(c, "REC-11", "duplicate_section", "qtrain",
      [](Env& e) {
        const std::string r = recipe(e);
        std::string text = t::read_file(e.path(r)) + "model:\n  dtype: float32\n";
        write(e.path(r), text);
        e.expect.push_back(
            "recipe.yaml:" + std::to_string(1 + std::count(text.begin(), text.end(), '\n') - 2) +
            ": ");
        return r + " --dry-run";
      },
      {"'model'"});
  add(c, "REC-12", "scalar_section", "qtrain",
      [](Env& e) {
        std::string text = g->recipe_text + "distributed: 5\n";
        write(e.path("r.yaml"), text);
        return std::string("r.yaml --dry-run");
      },
      {"field 'distributed'", "got '5'"});
  add(c, "REC-13", "duplicate_key", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  seed: 1\n", "  seed: 1\n  seed: 2\n"}}, "  seed: 2") +
               " --dry-run";
      },
      {"field 'training.seed'"});
  add(c, "REC-14", "alias_suggestion", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  lr: 1.0e-3\n", "  learning_rate: 1.0e-3\n"}}, "learning_rate") +
               " --dry-run";
      },
      {"field 'training.learning_rate'", "'training.lr'"});
  add(c, "REC-14", "typo_suggestion", "qmem",
      [](Env& e) {
        return recipe_at(e, {{"  keep_last: 2\n", "  keep_lats: 2\n"}}, "keep_lats");
      },
      {"'output.keep_last'"});
  // ---- 3.3 Value types
  c.push_back(
      {"REC-20",
       "string_list",
       "qtrain",
       [](Env& e) {
         return recipe_at(e, {{"  device: cpu\n", "  device: [cpu]\n"}}, "device:") + " --dry-run";
       },
       {"field 'model.device'", "a list"}});
  add(c, "REC-21", "float_for_int", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  max_steps: 2\n", "  max_steps: 2.5\n"}}, "max_steps") +
               " --dry-run";
      },
      {"field 'training.max_steps'", "'2.5'"});
  c.push_back(
      {"REC-21",
       "quoted_int_override",
       "qtrain",
       [](Env& e) { return recipe(e) + " adapter.r='\"8\"' --dry-run"; },
       {"field 'adapter.r'", "the quoted string '8'", "(set by override 'adapter.r=\"8\"')"}});
  add(c, "REC-22", "negative_seed", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  seed: 1\n", "  seed: -1\n"}}, "seed") + " --dry-run";
      },
      {"field 'training.seed'"});
  c.push_back(
      {"REC-23",
       "quoted_number",
       "qtrain",
       [](Env& e) {
         return recipe_at(e, {{"  lr: 1.0e-3\n", "  lr: \"1e-4\"\n"}}, "  lr") + " --dry-run";
       },
       {"field 'training.lr'", "the quoted string '1e-4'"}});
  add(c, "REC-24", "infinite", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  lr: 1.0e-3\n", "  lr: .inf\n"}}, "  lr") + " --dry-run";
      },
      {"field 'training.lr'"});
  add(c, "REC-25", "bool", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  tensorboard: false\n", "  tensorboard: maybe\n"}}, "tensorboard") +
               " --dry-run";
      },
      {"field 'output.tensorboard'", "'maybe'"});
  add(c, "REC-26", "mapping_for_list", "qtrain",
      [](Env& e) {
        return recipe_at(e,
                         {{"  dtype: float32\ndata:",
                           "  dtype: float32\n  target_modules: {q: v}\ndata:"}},
                         "target_modules") +
               " --dry-run";
      },
      {"field 'adapter.target_modules'", "a mapping"});
  add(c, "REC-27", "nested_list", "qtrain",
      [](Env& e) {
        return recipe_at(e,
                         {{"  dtype: float32\ndata:",
                           "  dtype: float32\n  target_modules: [[q_proj]]\ndata:"}},
                         "target_modules") +
               " --dry-run";
      },
      {"field 'adapter.target_modules'"});
  add(c, "REC-28", "fields_list", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  max_seq_len: 256\n", "  max_seq_len: 256\n  fields: [a]\n"}},
                         "fields") +
               " --dry-run";
      },
      {"field 'data.fields'"});
  c.push_back(
      {"REC-29",
       "fields_value_list",
       "qtrain",
       [](Env& e) {
         return recipe_at(
                    e, {{"  max_seq_len: 256\n", "  max_seq_len: 256\n  fields: {output: [a]}\n"}},
                    "fields") +
                " --dry-run";
       },
       {"field 'data.fields'"}});
  // ---- 3.4 Values
  add(c, "REC-40", "no_model_path", "qtrain",
      [](Env& e) { return recipe(e) + " model.path= --dry-run"; }, {"field 'model.path'"});
  add(c, "REC-41", "known_config", "qmem",
      [](Env& e) { return recipe(e) + " model.known_config=llama9-1b"; },
      {"field 'model.known_config'", "'llama9-1b'"});
  add(c, "REC-42", "dtype", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  dtype: float32\n  device", "  dtype: float8\n  device"}},
                         "float8") +
               " --dry-run";
      },
      {"field 'model.dtype'", "'float8'"});
  add(c, "REC-43", "device", "qtrain",
      [](Env& e) { return recipe(e) + " model.device=tpu --dry-run"; },
      {"field 'model.device'", "'tpu'", "(set by override 'model.device=tpu')"});
  add(c, "REC-44", "quant_type", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  type: nf4\n", "  type: nf3\n"}}, "nf3") + " --dry-run";
      },
      {"field 'quantization.type'", "'nf3'"});
  add(c, "REC-45", "blocksize", "qtrain",
      [](Env& e) { return recipe(e) + " quantization.blocksize=100 --dry-run"; },
      {"field 'quantization.blocksize'", "(got 100)"});
  add(c, "REC-46", "group_size", "qmem",
      [](Env& e) { return recipe(e) + " quantization.group_size=48"; },
      {"field 'quantization.group_size'", "(got 48)"});
  c.push_back(
      {"REC-47",
       "empty_target",
       "qtrain",
       [](Env& e) { return recipe(e) + " 'adapter.target_modules=[q_proj, \"\"]' --dry-run"; },
       {"field 'adapter.target_modules'"}});
  add(c, "REC-48", "adapter_type", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  type: lora\n", "  type: dora\n"}}, "dora") + " --dry-run";
      },
      {"field 'adapter.type'", "'dora'"});
  add(c, "REC-49", "rank_zero", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  r: 4\n", "  r: 0\n"}}, "  r: 0") + " --dry-run";
      },
      {"field 'adapter.r'", ">= 1 (got 0)"});
  add(c, "REC-49", "max_seq_len", "qmem", [](Env& e) { return recipe(e) + " data.max_seq_len=4"; },
      {"field 'data.max_seq_len'", ">= 8 (got 4)"});
  // Issue 24's reproductions: sizes that passed validation and failed in the allocator (exit 70).
  add(c, "REC-70", "rank_absurd", "qtrain",
      [](Env& e) { return recipe(e) + " adapter.r=2147483648"; },
      {"field 'adapter.r'", "at most 65536 (got 2147483648)"});
  add(c, "REC-70", "packed_max_seq_len_absurd", "qtrain",
      [](Env& e) { return recipe(e) + " data.max_seq_len=1099511627776 data.packing=true"; },
      {"field 'data.max_seq_len'", "at most 16777216 (got 1099511627776)"});
  add(c, "REC-71", "micro_batch_tokens", "qmem",
      [](Env& e) { return recipe(e) + " training.micro_batch_size=1048576 data.max_seq_len=4096"; },
      {"field 'training.micro_batch_size'", "(1048576 x 4096)"});
  c.push_back(
      {"REC-50",
       "negative_lr_override",
       "qtrain",
       [](Env& e) { return recipe(e) + " training.lr=-1 --dry-run"; },
       {"recipe.yaml: field 'training.lr'", "(got -1)", "(set by override 'training.lr=-1')"}});
  c.push_back(
      {"REC-51",
       "dropout",
       "qtrain",
       [](Env& e) {
         return recipe_at(e, {{"  dropout: 0.0\n", "  dropout: 1.0\n"}}, "dropout") + " --dry-run";
       },
       {"field 'adapter.dropout'"}});
  add(c, "REC-52", "min_lr_ratio", "qtrain",
      [](Env& e) { return recipe(e) + " training.min_lr_ratio=2 --dry-run"; },
      {"field 'training.min_lr_ratio'"});
  add(c, "REC-53", "adapter_dtype", "qtrain",
      [](Env& e) { return recipe(e) + " adapter.dtype=float16 --dry-run"; },
      {"field 'adapter.dtype'", "'float16'"});
  add(c, "REC-54", "regex", "qtrain",
      [](Env& e) { return recipe(e) + " 'adapter.target_regex=\"(q_proj\"' --dry-run"; },
      {"field 'adapter.target_regex'"});
  add(c, "REC-55", "no_targets", "qtrain",
      [](Env& e) { return recipe(e) + " 'adapter.target_modules=[]' --dry-run"; },
      {"field 'adapter.target_modules'"});
  add(c, "REC-56", "all_linear_plus", "qtrain",
      [](Env& e) { return recipe(e) + " 'adapter.target_modules=[all-linear, q_proj]' --dry-run"; },
      {"field 'adapter.target_modules'"});
  add(c, "REC-57", "no_data_path", "qtrain",
      [](Env& e) { return recipe(e) + " data.path= --dry-run"; }, {"field 'data.path'"});
  add(c, "REC-58", "format", "qtrain",
      [](Env& e) { return recipe(e) + " data.format=csv --dry-run"; },
      {"field 'data.format'", "'csv'"});
  add(c, "REC-59", "template", "qtrain",
      [](Env& e) { return recipe(e) + " data.template=vicuna --dry-run"; },
      {"field 'data.template'", "'vicuna'"});
  add(c, "REC-60", "chat_alpaca", "qtrain",
      [](Env& e) { return recipe(e) + " data.format=chat --dry-run"; },
      {"field 'data.template'", "not alpaca"});
  add(c, "REC-61", "field_of_format", "qtrain",
      [](Env& e) { return recipe(e) + " data.fields.question=q --dry-run"; },
      {"field 'data.fields'", "'question'"});
  add(c, "REC-62", "empty_field_name", "qtrain",
      [](Env& e) { return recipe(e) + " data.fields.output= --dry-run"; },
      {"field 'data.fields'", "'output'"});
  add(c, "REC-63", "overlong", "qtrain",
      [](Env& e) { return recipe(e) + " data.overlong=cut --dry-run"; },
      {"field 'data.overlong'", "'cut'"});
  add(c, "REC-64", "optimizer", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  optimizer: adamw\n", "  optimizer: sgd\n"}}, "sgd") + " --dry-run";
      },
      {"field 'training.optimizer'", "'sgd'"});
  add(c, "REC-65", "scheduler", "qtrain",
      [](Env& e) { return recipe(e) + " training.scheduler=step --dry-run"; },
      {"field 'training.scheduler'", "'step'"});
  add(c, "REC-66", "on_nonfinite", "qtrain",
      [](Env& e) { return recipe(e) + " training.on_nonfinite=ignore --dry-run"; },
      {"field 'training.on_nonfinite'", "'ignore'"});
  add(c, "REC-67", "no_output_dir", "qtrain",
      [](Env& e) { return recipe(e) + " output.dir= --dry-run"; }, {"field 'output.dir'"});
  add(c, "REC-68", "export", "qtrain",
      [](Env& e) { return recipe(e) + " 'output.export=[onnx]' --dry-run"; },
      {"field 'output.export'", "'onnx'"});
  add(c, "REC-69", "backend", "qtrain",
      [](Env& e) { return recipe(e) + " distributed.backend=mpi --dry-run"; },
      {"field 'distributed.backend'", "'mpi'"});
  // ---- 3.5 Contradictions
  add(c, "REC-80", "double_quant_int8", "qtrain",
      [](Env& e) {
        return recipe(e) + " quantization.type=int8 quantization.double_quant=true --dry-run";
      },
      {"field 'quantization.double_quant'"});
  add(c, "REC-81", "qalora_nf4", "qtrain",
      [](Env& e) { return recipe(e) + " adapter.type=qalora --dry-run"; },
      {"field 'adapter.type'", "(got nf4)"});
  add(c, "REC-82", "int4_lora", "qtrain",
      [](Env& e) {
        return recipe_at(e, {{"  type: nf4\n", "  type: int4\n"}}, "int4") + " --dry-run";
      },
      {"field 'quantization.type'"});
  c.push_back(
      {"REC-83",
       "modules_and_regex",
       "qtrain",
       [](Env& e) {
         return recipe(e) +
                " 'adapter.target_modules=[q_proj]' adapter.target_regex=.*q_proj --dry-run";
       },
       {"field 'adapter.target_regex'"}});
  add(c, "REC-84", "warmup_both", "qtrain",
      [](Env& e) {
        return recipe(e) + " training.warmup_steps=1 training.warmup_ratio=0.1 --dry-run";
      },
      {"field 'training.warmup_ratio'"});
  add(c, "REC-85", "warmup_past_end", "qtrain",
      [](Env& e) { return recipe(e) + " training.warmup_steps=5 --dry-run"; },
      {"field 'training.warmup_steps'", "(5 > 2)"});
  add(c, "REC-86", "eval_without_data", "qtrain",
      [](Env& e) { return recipe(e) + " training.eval_every=1 --dry-run"; },
      {"field 'training.eval_every'"});
  add(c, "REC-87", "gptq_for_lora", "qtrain",
      [](Env& e) { return recipe(e) + " 'output.export=[gptq-int4]' --dry-run"; },
      {"field 'output.export'"});
  add(c, "REC-88", "nccl_cpu", "qtrain",
      [](Env& e) { return recipe(e) + " distributed.backend=nccl --dry-run"; },
      {"field 'distributed.backend'"});
  c.push_back(
      {"REC-89",
       "synthetic_int4",
       "qtrain",
       [](Env& e) {
         return recipe(e) +
                " model.synthetic=true quantization.type=int4 adapter.type=qalora --dry-run";
       },
       {"field 'model.synthetic'"}});
  // ---- 3.6 Overrides
  add(c, "REC-100", "no_equals", "qtrain",
      [](Env& e) { return recipe(e) + " training.lr --dry-run"; }, {"'training.lr'"});
  add(c, "REC-101", "no_section", "qmem", [](Env& e) { return recipe(e) + " lr=1e-4"; },
      {"'lr=1e-4'"});
  add(c, "REC-102", "unknown_key", "qtrain",
      [](Env& e) { return recipe(e) + " training.learning_rate=1e-4 --dry-run"; },
      {"'training.learning_rate=1e-4'", "'training.lr'"});
  add(c, "REC-103", "bad_yaml", "qtrain",
      [](Env& e) { return recipe(e) + " 'adapter.target_modules=[q_proj' --dry-run"; },
      {"'adapter.target_modules=[q_proj'"});
  add(c, "REC-104", "not_utf8", "qtrain",
      [](Env& e) { return recipe(e) + " 'model.path=caf\xe9' --dry-run"; }, {});
  add(c, "REC-105", "control_character", "qtrain",
      [](Env& e) { return recipe(e) + " 'output.dir=run\x1b[0m' --dry-run"; },
      {"U+001B (character 15)"});
  // ---- 3.7 Planning
  add(c, "REC-110", "no_config", "qmem",
      [](Env& e) {
        fs::create_directories(e.path("empty-model"));
        return recipe(e) + " model.path=empty-model";
      },
      {"recipe.yaml: field 'model.path'", "'empty-model'"});

  // ---- 4. Model directory and config.json (through qeval) -------------------------------------
  add(c, "MOD-01", "no_config", "qeval",
      [](Env& e) {
        fs::create_directories(e.path("empty"));
        return eval_args("empty");
      },
      {"empty"});
  c.push_back(
      {"MOD-03", "preset", "qeval", [](Env&) { return eval_args("builtin:huge"); }, {"'huge'"}});
  add(c, "MOD-05", "device", "qeval", [](Env& e) { return eval_args(model(e), "--device tpu"); },
      {"'tpu'"});
  add(c, "MOD-07", "dtype", "qeval", [](Env& e) { return eval_args(model(e), "--dtype int8"); },
      {"'int8'", "--dtype"});
  auto config_case = [&c](const std::string& id, const std::string& name,
                          std::function<void(ojson&)> edit, std::vector<std::string> expect,
                          const std::string& finding = "") {
    expect.insert(expect.begin(), "model/config.json: ");
    add(
        c, id, name, "qeval",
        [edit](Env& e) {
          const std::string m = model(e);
          edit_json(e.path(m + "/config.json"), edit);
          return eval_args(m);
        },
        expect, finding);
  };
  add(c, "MOD-10", "invalid_json", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        write(e.path(m + "/config.json"), "{\"model_type\": \"llama\",");
        return eval_args(m);
      },
      {"model/config.json: "});
  add(c, "MOD-11", "array", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        write(e.path(m + "/config.json"), "[1, 2]");
        return eval_args(m);
      },
      {"model/config.json: "});
  config_case("MOD-12", "no_model_type", [](ojson& j) { j.erase("model_type"); },
              {"field 'model_type'"});
  config_case("MOD-13", "gemma", [](ojson& j) { j["model_type"] = "gemma"; },
              {"field 'model_type'", "'gemma'"});
  config_case("MOD-14", "no_hidden_size", [](ojson& j) { j.erase("hidden_size"); },
              {"field 'hidden_size'"});
  config_case("MOD-15", "string_int", [](ojson& j) { j["num_hidden_layers"] = "2"; },
              {"field 'num_hidden_layers'", "\"2\""});
  config_case("MOD-16", "string_number", [](ojson& j) { j["rms_norm_eps"] = "tiny"; },
              {"field 'rms_norm_eps'"});
  config_case("MOD-17", "string_bool", [](ojson& j) { j["tie_word_embeddings"] = "no"; },
              {"field 'tie_word_embeddings'"});
  config_case("MOD-18", "heads_zero", [](ojson& j) { j["num_attention_heads"] = 0; },
              {"field 'num_attention_heads'"});
  config_case("MOD-18", "rope_theta", [](ojson& j) { j["rope_theta"] = -1.0; },
              {"field 'rope_theta'"});
  config_case("MOD-19", "negative_layers", [](ojson& j) { j["intermediate_size"] = -128; },
              {"field 'intermediate_size'", "-128"});
  config_case("MOD-20", "kv_heads", [](ojson& j) { j["num_key_value_heads"] = 3; },
              {"field 'num_key_value_heads'", "(4)"});
  config_case("MOD-21", "odd_head_dim", [](ojson& j) { j["head_dim"] = 15; }, {"field 'head_dim'"});
  config_case("MOD-30", "many_layers", [](ojson& j) { j["num_hidden_layers"] = 100000; },
              {"field 'num_hidden_layers'", "100000"});
  config_case("MOD-31", "huge_mlp", [](ojson& j) { j["intermediate_size"] = int64_t{1} << 50; },
              {"config.json", "more than 2^48"});
  config_case("MOD-36", "gemma3_vision",
              [](ojson& j) {
                const ojson text = j;
                j = {{"model_type", "gemma3"},
                     {"text_config", text},
                     {"vision_config", {{"model_type", "siglip_vision_model"}}}};
              },
              {"field 'vision_config'"});
  config_case("MOD-37", "gemma3_no_text_config",
              [](ojson& j) {
                j = {{"model_type", "gemma3"}};
              },
              {"field 'text_config'"});
  config_case("MOD-38", "gemma3_flat_rope_parameters",
              [](ojson& j) {
                j["model_type"] = "gemma3_text";
                j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
              },
              {"field 'rope_parameters'"});
  add(c, "MOD-32", "synthetic_beyond_memory", "qtrain",
      [](Env& e) {
        const std::string m = model(e);
        edit_json(e.path(m + "/config.json"),
                  [](ojson& j) { j["hidden_size"] = int64_t{100'000'000'000}; });
        return recipe(e) + " model.synthetic=true model.path=" + m;
      },
      {"field 'model.path'", "hidden_size 100000000000"});
  config_case("MOD-22", "rope_scaling", [](ojson& j) { j["rope_scaling"] = 2; },
              {"field 'rope_scaling'"});
  config_case("MOD-23", "llama3_freq",
              [](ojson& j) {
                j["rope_scaling"] = {{"rope_type", "llama3"},
                                     {"factor", 8.0},
                                     {"low_freq_factor", 4.0},
                                     {"high_freq_factor", 1.0},
                                     {"original_max_position_embeddings", 1024}};
              },
              {"field 'rope_scaling.high_freq_factor'"});
  config_case("MOD-24", "yarn",
              [](ojson& j) {
                j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 2.0}};
              },
              {"'yarn'"});
  config_case("MOD-25", "partial_rotary", [](ojson& j) { j["partial_rotary_factor"] = 0.5; },
              {"field 'partial_rotary_factor'"});
  config_case("MOD-26", "gelu", [](ojson& j) { j["hidden_act"] = "gelu"; }, {"field 'hidden_act'"});
  config_case("MOD-27", "qwen_sliding",
              [](ojson& j) {
                j["model_type"] = "qwen2";
                j["use_sliding_window"] = true;
              },
              {"field 'use_sliding_window'"});
  config_case("MOD-28", "eos_list",
              [](ojson& j) {
                j["eos_token_id"] = ojson::array({2, "x"});
              },
              {"field 'eos_token_id'"});
  config_case("MOD-29", "dtype_number", [](ojson& j) { j["torch_dtype"] = 5; }, {});

  // ---- 5.1 safetensors files (the model's weights, through qeval) ------------------------------
  auto weights_case = [&c](const std::string& id, const std::string& name,
                           std::function<void(const std::string&)> corrupt,
                           std::vector<std::string> expect) {
    expect.insert(expect.begin(), "model/model.safetensors: ");
    add(
        c, id, name, "qeval",
        [corrupt](Env& e) {
          const std::string m = model(e);
          corrupt(e.path(m + "/model.safetensors"));
          return eval_args(m);
        },
        expect);
  };
  add(c, "CKP-02", "directory", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        replace_with_directory(e.path(m + "/model.safetensors"));
        return eval_args(m);
      },
      {"model/model.safetensors: "});
  weights_case("CKP-04", "truncated", [](const std::string& p) { fs::resize_file(p, 5); },
               {"5 bytes"});
  weights_case("CKP-05", "lfs_pointer",
               [](const std::string& p) {
                 t::write_file(
                     p, "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 494944\n");
               },
               {});
  weights_case("CKP-06", "header_past_end",
               [](const std::string& p) {
                 RawSafetensors raw = read_raw(p);
                 t::write_file(
                     p, le64(raw.header.size() + raw.data.size() + 1) + raw.header + raw.data);
               },
               {});
  weights_case("CKP-07", "not_brace",
               [](const std::string& p) {
                 RawSafetensors raw = read_raw(p);
                 raw.header[0] = '[';
                 write_raw(p, raw.header, raw.data);
               },
               {});
  weights_case("CKP-08", "nul",
               [](const std::string& p) {
                 RawSafetensors raw = read_raw(p);
                 raw.header[raw.header.size() - 1] = '\0';
                 write_raw(p, raw.header, raw.data);
               },
               {});
  weights_case("CKP-10", "duplicate_tensor",
               [](const std::string& p) {
                 RawSafetensors raw = read_raw(p);
                 ojson header = ojson::parse(raw.header);
                 const std::string entry = header[kQProj].dump();
                 raw.header =
                     replace_once(header.dump(), "{", "{\"" + kQProj + "\":" + entry + ",");
                 write_raw(p, raw.header, raw.data);
               },
               {kQProj});
  weights_case("CKP-11", "not_json",
               [](const std::string& p) {
                 RawSafetensors raw = read_raw(p);
                 write_raw(p, "{\"a\": tru}", raw.data);
               },
               {});
  weights_case(
      "CKP-13", "metadata",
      [](const std::string& p) { edit_header(p, [](ojson& h) { h["__metadata__"] = 5; }); },
      {"field '__metadata__'"});
  weights_case("CKP-14", "metadata_value",
               [](const std::string& p) {
                 edit_header(p, [](ojson& h) { h["__metadata__"] = {{"format", 1}}; });
               },
               {"field '__metadata__.format'"});
  weights_case("CKP-15", "entry_number",
               [](const std::string& p) { edit_header(p, [](ojson& h) { h[kQProj] = 5; }); },
               {"tensor '" + kQProj + "'"});
  weights_case(
      "CKP-16", "no_dtype",
      [](const std::string& p) { edit_header(p, [](ojson& h) { h[kQProj].erase("dtype"); }); },
      {"tensor '" + kQProj + "'", "field 'dtype'"});
  weights_case(
      "CKP-18", "dtype_f7",
      [](const std::string& p) { edit_header(p, [](ojson& h) { h[kQProj]["dtype"] = "F7"; }); },
      {"tensor '" + kQProj + "'", "field 'dtype'", "'F7'"});
  weights_case("CKP-19", "dtype_f4",
               [](const std::string& p) {
                 edit_header(p, [](ojson& h) { h[kQProj]["dtype"] = "F8_E8M0"; });
               },
               {"tensor '" + kQProj + "'", "field 'dtype'"});
  weights_case(
      "CKP-20", "shape_string",
      [](const std::string& p) { edit_header(p, [](ojson& h) { h[kQProj]["shape"] = "64x64"; }); },
      {"field 'shape'"});
  weights_case("CKP-21", "dimension_float",
               [](const std::string& p) {
                 edit_header(p, [](ojson& h) { h[kQProj]["shape"] = ojson::array({64, 1.5}); });
               },
               {"field 'shape'", "dimension"});
  weights_case("CKP-22", "negative_begin",
               [](const std::string& p) {
                 edit_header(p, [](ojson& h) { h[kQProj]["data_offsets"][0] = -4; });
               },
               {"field 'data_offsets'", "begin"});
  weights_case("CKP-24", "huge_shape",
               [](const std::string& p) {
                 edit_header(p, [](ojson& h) {
                   h[kQProj]["shape"] = ojson::array({int64_t{1} << 40, int64_t{1} << 40});
                 });
               },
               {"field 'shape'"});
  weights_case(
      "CKP-25", "offsets_scalar",
      [](const std::string& p) { edit_header(p, [](ojson& h) { h[kQProj]["data_offsets"] = 0; }); },
      {"field 'data_offsets'"});
  weights_case("CKP-26", "begin_after_end",
               [](const std::string& p) {
                 edit_header(p, [](ojson& h) {
                   auto& o = h[kQProj]["data_offsets"];
                   const auto b = o[0].get<uint64_t>(), end = o[1].get<uint64_t>();
                   o = ojson::array({end, b});
                 });
               },
               {"field 'data_offsets'"});
  weights_case("CKP-27", "shape_vs_span",
               [](const std::string& p) {
                 edit_header(p, [](ojson& h) { h[kQProj]["shape"] = ojson::array({64, 32}); });
               },
               {"tensor '" + kQProj + "'", "field 'data_offsets'", "F32 shape [64,32]"});
  weights_case("CKP-28", "offsets_beyond_buffer",
               [](const std::string& p) {
                 // Cut the data buffer in half: the header still describes all of it.
                 RawSafetensors raw = read_raw(p);
                 write_raw(p, raw.header, raw.data.substr(0, raw.data.size() / 2));
               },
               {"tensor '"});
  weights_case("CKP-29", "overlap",
               [](const std::string& p) {
                 edit_header(p, [](ojson& h) {
                   h["model.layers.0.self_attn.v_proj.weight"]["data_offsets"] =
                       h["model.layers.0.self_attn.k_proj.weight"]["data_offsets"];
                 });
               },
               {"overlap tensor 'model.layers.0.self_attn."});
  weights_case("CKP-30", "hole",
               [](const std::string& p) {
                 // Drop the entry at the very start of the buffer: its bytes belong to no tensor.
                 edit_header(p, [](ojson& h) {
                   for (auto it = h.begin(); it != h.end(); ++it) {
                     if (it.key() != "__metadata__" && it.value()["data_offsets"][0] == 0) {
                       h.erase(it);
                       return;
                     }
                   }
                 });
               },
               {"bytes [0, "});
  weights_case("CKP-31", "trailing_bytes",
               [](const std::string& p) {
                 RawSafetensors raw = read_raw(p);
                 write_raw(p, raw.header, raw.data + "junk");
               },
               {});
  // ---- 5.2 directory and index
  add(c, "CKP-40", "no_weights", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        fs::remove(e.path(m + "/model.safetensors"));
        return eval_args(m);
      },
      {"model: "});
  add(c, "CKP-51", "pickle_only", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        fs::rename(e.path(m + "/model.safetensors"), e.path(m + "/pytorch_model.bin"));
        return eval_args(m);
      },
      {"model: ", "pickled pytorch_model.bin"});
  add(c, "CKP-51", "pickle_index", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        fs::remove(e.path(m + "/model.safetensors"));
        write(e.path(m + "/pytorch_model.bin.index.json"), "{\"weight_map\": {}}");
        return eval_args(m);
      },
      {"model: ", "pickled pytorch_model.bin.index.json"});
  auto index_case = [&c](const std::string& id, const std::string& name,
                         std::function<void(ojson&)> edit, std::vector<std::string> expect) {
    add(
        c, id, name, "qeval",
        [edit](Env& e) {
          const std::string m = model(e);
          shard_model(e, m, edit);
          return eval_args(m);
        },
        expect);
  };
  add(c, "CKP-43", "index_array", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        shard_model(e, m, [](ojson&) {});
        write(e.path(m + "/model.safetensors.index.json"), "[]");
        return eval_args(m);
      },
      {"model/model.safetensors.index.json: "});
  index_case("CKP-44", "metadata", [](ojson& j) { j["metadata"] = "v1"; },
             {"model/model.safetensors.index.json: field 'metadata'"});
  index_case("CKP-45", "no_weight_map", [](ojson& j) { j.erase("weight_map"); },
             {"model/model.safetensors.index.json: field 'weight_map'"});
  index_case("CKP-46", "shard_number", [](ojson& j) { j["weight_map"][kQProj] = 1; },
             {"tensor '" + kQProj + "'", "field 'weight_map'"});
  index_case("CKP-47", "shard_outside",
             [](ojson& j) { j["weight_map"][kQProj] = "../x.safetensors"; },
             {"model/model.safetensors.index.json: tensor '" + kQProj + "'", "'../x.safetensors'"});
  index_case("CKP-47", "shard_absolute", [](ojson& j) { j["weight_map"][kQProj] = "/etc/passwd"; },
             {"'/etc/passwd'"});
  index_case("CKP-48", "missing_shard",
             [](ojson& j) { j["weight_map"][kQProj] = "model-00002-of-00002.safetensors"; },
             {"model/model-00002-of-00002.safetensors: ", "model.safetensors.index.json"});
  index_case("CKP-49", "stale_index",
             [](ojson& j) {
               j["weight_map"]["model.layers.9.mlp.up_proj.weight"] =
                   "model-00001-of-00001.safetensors";
             },
             {"model/model.safetensors.index.json: tensor 'model.layers.9.mlp.up_proj.weight'"});
  index_case("CKP-50", "unmapped", [](ojson& j) { j["weight_map"].erase(kQProj); },
             {"model/model-00001-of-00001.safetensors: tensor '" + kQProj + "'"});
  // ---- 5.3 weights against the model
  auto tensors_case = [&c](const std::string& id, const std::string& name,
                           std::function<void(NamedTensors&)> edit, std::vector<std::string> expect,
                           const std::string& precision = "fp32") {
    add(
        c, id, name, "qeval",
        [edit, precision](Env& e) {
          const std::string m = model(e);
          edit_tensors(e.path(m + "/model.safetensors"), edit);
          return replace_once(eval_args(m), "--precision fp32", "--precision " + precision);
        },
        expect);
  };
  tensors_case("CKP-60", "missing_tensor", [](NamedTensors& ts) { remove_tensor(ts, kQProj); },
               {"model: tensor '" + kQProj + "'", "1 tensor(s)"});
  tensors_case("CKP-61", "extra_tensor",
               [](NamedTensors& ts) {
                 ts.emplace_back("model.layers.0.mlp.gate_proj.bias", at::zeros({128}));
               },
               {"model: tensor 'model.layers.0.mlp.gate_proj.bias'", "llama"});
  tensors_case("CKP-62", "shape",
               [](NamedTensors& ts) {
                 for (auto& [n, v] : ts)
                   if (n == kQProj) v = at::zeros({64, 32});
               },
               {"tensor '" + kQProj + "'", "[64, 32]"});
  // A config.json whose sizes disagree with the weights is refused before the model is allocated
  // (it used to die in the allocator: hidden_size 1e9 asks for 1.5 TB of embeddings).
  add(c, "CKP-62", "config_hidden_size_qgen", "qgen",
      [](Env& e) {
        const std::string m = model(e);
        edit_json(e.path(m + "/config.json"), [](ojson& j) { j["hidden_size"] = 1000000000; });
        return m + " --prompt hi -n 1";
      },
      {"model/model.safetensors: tensor 'model.embed_tokens.weight'", "[384, 1000000000]"});
  add(c, "CKP-62", "config_vocab_size_qtrain_nf4", "qtrain",
      [](Env& e) {
        const std::string m = model(e);
        edit_json(e.path(m + "/config.json"), [](ojson& j) { j["vocab_size"] = 1000000000; });
        return recipe(e) + " model.path=" + m;
      },
      {"model/model.safetensors: tensor 'model.embed_tokens.weight'", "[1000000000, 64]"});
  tensors_case("CKP-63", "integer_weight",
               [](NamedTensors& ts) {
                 for (auto& [n, v] : ts)
                   if (n == "model.norm.weight") v = v.to(at::kInt);
               },
               {"tensor 'model.norm.weight'"});
  tensors_case(
      "CKP-65", "nf4_projection_shape",
      [](NamedTensors& ts) {
        for (auto& [n, v] : ts)
          if (n == kQProj) v = at::zeros({64, 32});
      },
      {"tensor '" + kQProj + "'"}, "nf4");
  tensors_case(
      "CKP-66", "nf4_integer_projection",
      [](NamedTensors& ts) {
        for (auto& [n, v] : ts)
          if (n == kQProj) v = v.to(at::kInt);
      },
      {"tensor '" + kQProj + "'"}, "nf4");
  auto poison = [](const std::string& name) {
    return [name](NamedTensors& ts) {
      for (auto& [n, v] : ts)
        if (n == name) v.view({-1})[1] = std::nan("");
    };
  };
  tensors_case("CKP-70", "nan_norm", poison("model.norm.weight"),
               {"model/model.safetensors: tensor 'model.norm.weight'"});
  tensors_case("CKP-70", "nan_nf4_projection", poison(kQProj),
               {"model/model.safetensors: tensor '" + kQProj + "'"}, "nf4");

  // ---- 6. Tokenizers ------------------------------------------------------------------------
  add(c, "TOK-01", "none", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        fs::remove(e.path(m + "/tokenizer.model"));
        fs::remove(e.path(m + "/tokenizer.json"));
        return eval_args(m);
      },
      {"model: "});
  add(c, "TOK-03", "config_json", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        write(e.path(m + "/tokenizer_config.json"), "{\"add_bos_token\": tru");
        return eval_args(m);
      },
      {"model/tokenizer_config.json: "});
  add(c, "TOK-04", "config_array", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        write(e.path(m + "/tokenizer_config.json"), "[]");
        return eval_args(m);
      },
      {"model/tokenizer_config.json: "});
  add(c, "TOK-05", "add_bos_string", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        edit_json(e.path(m + "/tokenizer_config.json"),
                  [](ojson& j) { j["add_bos_token"] = "yes"; });
        return eval_args(m);
      },
      {"model/tokenizer_config.json: field 'add_bos_token'"});
  add(c, "TOK-12", "spm_garbage", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        write(e.path(m + "/tokenizer.model"), "version https://git-lfs.github.com/spec/v1\n");
        return eval_args(m);
      },
      {"model/tokenizer.model: "});
  add(c, "TOK-10", "spm_directory", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        replace_with_directory(e.path(m + "/tokenizer.model"));
        return eval_args(m);
      },
      {"model/tokenizer.model: "});
  auto bpe_case = [&c](const std::string& id, const std::string& name,
                       std::function<void(ojson&)> edit, std::vector<std::string> expect,
                       const std::string& file = "tokenizer.json") {
    expect.insert(expect.begin(), "bpe/" + file + ": ");
    add(
        c, id, name, "qeval",
        [edit, file](Env& e) {
          const std::string m = bpe_model(e);
          edit_json(e.path(m + "/" + file), edit);
          return eval_args(m);
        },
        expect);
  };
  add(c, "TOK-03", "bpe_not_json", "qeval",
      [](Env& e) {
        const std::string m = bpe_model(e);
        write(e.path(m + "/tokenizer.json"), "{\"model\": ");
        return eval_args(m);
      },
      {"bpe/tokenizer.json: "});
  add(c, "TOK-20", "json_directory", "qeval",
      [](Env& e) {
        const std::string m = bpe_model(e);
        replace_with_directory(e.path(m + "/tokenizer.json"));
        return eval_args(m);
      },
      {"bpe/tokenizer.json: "});
  add(c, "TOK-21", "array", "qeval",
      [](Env& e) {
        const std::string m = bpe_model(e);
        write(e.path(m + "/tokenizer.json"), "[]");
        return eval_args(m);
      },
      {"bpe/tokenizer.json: "});
  bpe_case(
      "TOK-06", "bos_number", [](ojson& j) { j["bos_token"] = 5; }, {"field 'bos_token'"},
      "tokenizer_config.json");
  bpe_case(
      "TOK-07", "eos_unknown", [](ojson& j) { j["eos_token"] = "<|nope|>"; },
      {"field 'eos_token'", "<|nope|>"}, "tokenizer_config.json");
  add(c, "TOK-08", "dangling_tokenizer_model", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        fs::remove(e.path(m + "/tokenizer.model"));
        fs::create_symlink("../blobs/5f1e", e.path(m + "/tokenizer.model"));
        return eval_args(m);
      },
      {"model/tokenizer.model: ", "'../blobs/5f1e'"});
  bpe_case("TOK-22", "no_model", [](ojson& j) { j.erase("model"); }, {"field 'model'"});
  bpe_case("TOK-24", "added_tokens", [](ojson& j) { j["added_tokens"] = 5; },
           {"field 'added_tokens'"});
  bpe_case("TOK-28", "unigram", [](ojson& j) { j["model"]["type"] = "Unigram"; },
           {"field 'model.type'", "\"Unigram\""});
  bpe_case("TOK-30", "dropout", [](ojson& j) { j["model"]["dropout"] = 0.1; },
           {"field 'model.dropout'"});
  bpe_case("TOK-32", "duplicate_id", [](ojson& j) { j["model"]["vocab"]["hello"] = 256; },
           {"field 'model.vocab'"});
  bpe_case("TOK-58", "sparse_ids", [](ojson& j) { j["model"]["vocab"]["far"] = 2000000000; },
           {"field 'model.vocab'", "2000000000"});
  bpe_case("TOK-33", "merge_part", [](ojson& j) { j["model"]["merges"].push_back("he zz"); },
           {"field 'model.merges[2]'", "\"zz\""});
  bpe_case("TOK-34", "merge_three", [](ojson& j) { j["model"]["merges"].push_back("h e l"); },
           {"field 'model.merges[2]'"});
  bpe_case("TOK-36", "nfkc", [](ojson& j) { j["normalizer"] = {{"type", "NFKC"}}; }, {"\"NFKC\""});
  bpe_case("TOK-38", "added_twice",
           [](ojson& j) {
             ojson again = j["added_tokens"][2];
             again["id"] = 261;
             j["added_tokens"].push_back(again);
           },
           {"field 'added_tokens[3]'"});
  bpe_case("TOK-40", "no_pre_tokenizer", [](ojson& j) { j["pre_tokenizer"] = nullptr; },
           {"field 'pre_tokenizer'"});
  bpe_case("TOK-46", "bad_pattern",
           [](ojson& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(a"; },
           {"pattern"});
  bpe_case("TOK-47", "metaspace",
           [](ojson& j) {
             j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Metaspace"}};
           },
           {"\"Metaspace\""});
  bpe_case("TOK-49", "no_decoder", [](ojson& j) { j["decoder"] = nullptr; }, {"field 'decoder'"});
  bpe_case("TOK-50", "decoder_type",
           [](ojson& j) {
             j["decoder"] = {{"type", "Metaspace"}};
           },
           {"field 'decoder.type'"});
  // 6.5 the model's chat template (data.template auto)
  c.push_back(
      {"TOK-70",
       "no_tokenizer_config",
       "qtrain",
       [](Env& e) {
         const std::string m = model(e);
         fs::remove(e.path(m + "/tokenizer_config.json"));
         const std::string data = jsonl(
             e,
             {R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})"});
         return data_check(
             e, "model.path=" + m + " data.path=" + data + " data.format=chat data.template=auto");
       },
       {"model/tokenizer_config.json: "}});
  c.push_back(
      {"TOK-72",
       "no_chat_template",
       "qtrain",
       [](Env& e) {
         const std::string data = jsonl(
             e,
             {R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})"});
         return data_check(e, "model.path=" + model(e) + " data.path=" + data +
                                  " data.format=chat data.template=auto");
       },
       {"model/tokenizer_config.json: field 'chat_template'"}});
  c.push_back({"TOK-73",
               "unknown_template",
               "qgen",
               [](Env& e) {
                 // Training renders any template with the Jinja engine; qgen's prompts use the
                 // known shapes, so an unrecognised template is refused there.
                 const std::string m = model(e);
                 edit_json(e.path(m + "/tokenizer_config.json"),
                           [](ojson& j) { j["chat_template"] = "{{ messages }}"; });
                 return m + " --chat hi --template auto";
               },
               {"model/tokenizer_config.json: field 'chat_template'"}});

  // ---- 7. Datasets (qtrain data-check: no weights loaded) --------------------------------------
  add(c, "DAT-01", "missing", "qtrain",
      [](Env& e) { return data_check(e, "data.path=nope.jsonl"); }, {"nope.jsonl: "});
  add(c, "DAT-02", "csv", "qtrain",
      [](Env& e) {
        write(e.path("d.csv"), "a,b\n");
        return data_check(e, "data.path=d.csv");
      },
      {"d.csv: "});
  add(c, "DAT-05", "malformed_line", "qtrain",
      [](Env& e) {
        return data_check(
            e, "data.path=" + jsonl(e, {kGoodAlpaca, kGoodAlpaca, "{\"instruction\": "}));
      },
      {"bad.jsonl:3: "});
  add(c, "DAT-05", "json_file", "qtrain",
      [](Env& e) {
        write(e.path("d.json"), "[\n" + kGoodAlpaca + ",\n{\"output\" 1}\n]\n");
        return data_check(e, "data.path=d.json");
      },
      {"d.json:3: "});
  add(c, "DAT-06", "array_line", "qtrain",
      [](Env& e) {
        return data_check(e, "data.path=" + jsonl(e, {kGoodAlpaca, "[1, 2]"}));
      },
      {"bad.jsonl:2: "});
  add(c, "DAT-07", "json_object", "qtrain",
      [](Env& e) {
        write(e.path("d.json"), kGoodAlpaca + "\n");
        return data_check(e, "data.path=d.json");
      },
      {"d.json:1: "});
  add(c, "DAT-08", "json_element", "qtrain",
      [](Env& e) {
        write(e.path("d.json"), "[\n" + kGoodAlpaca + ",\n5\n]\n");
        return data_check(e, "data.path=d.json");
      },
      {"d.json:"});
  add(c, "DAT-09", "empty", "qtrain",
      [](Env& e) {
        return data_check(e, "data.path=" + jsonl(e, {"", "  "}));
      },
      {"bad.jsonl"});
  add(c, "DAT-10", "latin1_txt", "qtrain",
      [](Env& e) {
        write(e.path("bad.txt"), "first line\ncaf\xe9 au lait\n");
        return data_check(e, "data.path=bad.txt data.format=text");
      },
      {"bad.txt:2: "});
  add(c, "DAT-11", "long_record", "qtrain",
      [](Env& e) {
        const std::string long_line =
            R"({"instruction": "Say hi.", "output": ")" + std::string(200, 'y') + "\"}";
        return data_check(
            e, "data.path=" + jsonl(e, {kGoodAlpaca, long_line}) + " data.max_record_bytes=100");
      },
      {"bad.jsonl:2: "});
  c.push_back(
      {"DAT-20",
       "missing_output",
       "qtrain",
       [](Env& e) {
         return data_check(e, "data.path=" + jsonl(e, {kGoodAlpaca, R"({"instruction": "x"})"}));
       },
       {"bad.jsonl:2: field 'output'"}});
  add(c, "DAT-20", "renamed_field", "qtrain",
      [](Env& e) {
        return data_check(e, "data.path=" + jsonl(e, {kGoodAlpaca}) + " data.fields.output=answer");
      },
      {"bad.jsonl:1: field 'answer'"});
  add(c, "DAT-21", "number_output", "qtrain",
      [](Env& e) {
        return data_check(e, "data.path=" + jsonl(e, {R"({"instruction": "x", "output": 5})"}));
      },
      {"bad.jsonl:1: field 'output'"});
  const std::string chat = " data.format=chat data.template=chatml";
  add(c, "DAT-22", "no_messages", "qtrain",
      [chat](Env& e) {
        return data_check(e, "data.path=" + jsonl(e, {R"({"text": "x"})"}) + chat);
      },
      {"bad.jsonl:1: field 'messages'"});
  add(c, "DAT-23", "empty_messages", "qtrain",
      [chat](Env& e) {
        return data_check(e, "data.path=" + jsonl(e, {R"({"messages": []})"}) + chat);
      },
      {"bad.jsonl:1: field 'messages'"});
  add(c, "DAT-24", "message_number", "qtrain",
      [chat](Env& e) {
        return data_check(e, "data.path=" + jsonl(e, {R"({"messages": [5]})"}) + chat);
      },
      {"bad.jsonl:1: field 'messages[0]'"});
  c.push_back(
      {"DAT-25",
       "tool_role",
       "qtrain",
       [chat](Env& e) {
         return data_check(
             e,
             "data.path=" +
                 jsonl(
                     e,
                     {R"({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]})"}) +
                 chat);
       },
       {"bad.jsonl:1: field 'messages[1].role'", "'tool'"}});
  c.push_back(
      {"DAT-26",
       "mistral_system",
       "qtrain",
       [](Env& e) {
         return data_check(
             e,
             "data.path=" +
                 jsonl(
                     e,
                     {R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})"}) +
                 " data.format=chat data.template=mistral");
       },
       {"bad.jsonl:1: "}});
  c.push_back(
      {"DAT-27",
       "llama2_two_users",
       "qtrain",
       [](Env& e) {
         return data_check(
             e,
             "data.path=" +
                 jsonl(
                     e,
                     {R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]})"}) +
                 " data.format=chat data.template=llama2");
       },
       {"bad.jsonl:1: ", "llama2"}});
  c.push_back(
      {"DAT-28",
       "no_assistant",
       "qtrain",
       [chat](Env& e) {
         return data_check(
             e, "data.path=" + jsonl(e, {R"({"messages": [{"role": "user", "content": "a"}]})"}) +
                    chat);
       },
       {"bad.jsonl:1: field 'messages'"}});
  add(c, "DAT-30", "all_too_long", "qtrain",
      [](Env& e) {
        return data_check(e, "data.path=" + g->data + " data.max_seq_len=8 data.overlong=drop");
      },
      {"max_seq_len 8"});
  // A failed run on bad data leaves the existing run directory as it was, even with
  // output.overwrite=true (the old run is removed only once the data has loaded).
  c.push_back(
      {"DAT-05",
       "overwrite_keeps_run",
       "qtrain",
       [](Env& e) {
         const std::string run = run_copy(e);
         keep_tree(e, run);
         return recipe(e) + " output.overwrite=true data.path=" + jsonl(e, {kGoodAlpaca, "{oops"});
       },
       {"bad.jsonl:2: "}});

  // ---- 8. Adapters (qeval --adapter; qexport)
  // ----------------------------------------------------
  auto adapter_case = [&c](const std::string& id, const std::string& name,
                           std::function<void(Env&, const std::string&)> edit,
                           std::vector<std::string> expect) {
    add(
        c, id, name, "qeval",
        [edit](Env& e) {
          const std::string a = adapter_copy(e);
          edit(e, a);
          return eval_args(model(e), "--adapter " + a);
        },
        expect);
  };
  auto config_edit = [](std::function<void(ojson&)> edit) {
    return [edit](Env& e, const std::string& a) {
      edit_json(e.path(a + "/adapter_config.json"), edit);
    };
  };
  add(c, "ADP-01", "missing_dir", "qeval",
      [](Env& e) { return eval_args(model(e), "--adapter nope"); }, {"nope: "});
  adapter_case("ADP-02", "no_config",
               [](Env& e, const std::string& a) { fs::remove(e.path(a + "/adapter_config.json")); },
               {"adapter/adapter_config.json: "});
  adapter_case("ADP-03", "pickle_only",
               [](Env& e, const std::string& a) {
                 fs::rename(e.path(a + "/adapter_model.safetensors"),
                            e.path(a + "/adapter_model.bin"));
               },
               {"adapter/adapter_model.bin: "});
  adapter_case(
      "ADP-04", "no_weights",
      [](Env& e, const std::string& a) { fs::remove(e.path(a + "/adapter_model.safetensors")); },
      {"adapter/adapter_model.safetensors: "});
  adapter_case(
      "ADP-06", "not_json",
      [](Env& e, const std::string& a) { write(e.path(a + "/adapter_config.json"), "{\"r\": 8"); },
      {"adapter/adapter_config.json: "});
  adapter_case(
      "ADP-07", "array",
      [](Env& e, const std::string& a) { write(e.path(a + "/adapter_config.json"), "[]"); },
      {"adapter/adapter_config.json: "});
  adapter_case("ADP-08", "ia3", config_edit([](ojson& j) { j["peft_type"] = "IA3"; }),
               {"adapter/adapter_config.json: field 'peft_type'", "IA3"});
  adapter_case("ADP-09", "seq_cls", config_edit([](ojson& j) { j["task_type"] = "SEQ_CLS"; }),
               {"field 'task_type'", "SEQ_CLS"});
  adapter_case("ADP-10", "dora", config_edit([](ojson& j) { j["use_dora"] = true; }),
               {"field 'use_dora'", "(use_dora = true)"});
  adapter_case("ADP-13", "modules_to_save",
               config_edit([](ojson& j) { j["modules_to_save"] = ojson::array({"lm_head"}); }),
               {"field 'modules_to_save'"});
  adapter_case("ADP-14", "rank_pattern", config_edit([](ojson& j) {
                 j["rank_pattern"] = {{"q_proj", 8}};
               }),
               {"field 'rank_pattern'"});
  adapter_case("ADP-19", "bias_all", config_edit([](ojson& j) { j["bias"] = "all"; }),
               {"field 'bias'", "\"all\""});
  adapter_case("ADP-20", "rank_zero", config_edit([](ojson& j) { j["r"] = 0; }),
               {"adapter/adapter_config.json: field 'r'", "got 0"});
  adapter_case("ADP-21", "alpha_string", config_edit([](ojson& j) { j["lora_alpha"] = "8"; }),
               {"field 'lora_alpha'"});
  adapter_case("ADP-22", "rslora_string", config_edit([](ojson& j) { j["use_rslora"] = "no"; }),
               {"field 'use_rslora'"});
  adapter_case("ADP-23", "peft_type_number", config_edit([](ojson& j) { j["peft_type"] = 1; }),
               {"field 'peft_type'"});
  adapter_case("ADP-24", "alpha_zero", config_edit([](ojson& j) { j["lora_alpha"] = 0; }),
               {"field 'lora_alpha'"});
  adapter_case("ADP-25", "dropout_one", config_edit([](ojson& j) { j["lora_dropout"] = 1.0; }),
               {"field 'lora_dropout'"});
  adapter_case("ADP-26", "target_number", config_edit([](ojson& j) {
                 j["target_modules"] = ojson::array({"q_proj", 3});
               }),
               {"field 'target_modules'"});
  adapter_case("ADP-27", "target_object", config_edit([](ojson& j) {
                 j["target_modules"] = {{"q", 1}};
               }),
               {"field 'target_modules'"});
  adapter_case("ADP-28", "extra_tensor",
               [](Env& e, const std::string& a) {
                 edit_tensors(e.path(a + "/adapter_model.safetensors"), [](NamedTensors& ts) {
                   ts.emplace_back("base_model.model.lm_head.modules_to_save.weight",
                                   at::zeros({4}));
                 });
               },
               {"adapter/adapter_model.safetensors: tensor "
                "'base_model.model.lm_head.modules_to_save.weight'"});
  adapter_case("ADP-29", "one_dim",
               [](Env& e, const std::string& a) {
                 edit_tensors(e.path(a + "/adapter_model.safetensors"), [](NamedTensors& ts) {
                   for (auto& [n, v] : ts)
                     if (n == kAdapterA) v = v.flatten();
                 });
               },
               {"tensor '" + kAdapterA + "'"});
  adapter_case("ADP-30", "wrong_rank", config_edit([](ojson& j) { j["r"] = 8; }),
               {"adapter/adapter_model.safetensors: tensor '", "r = 8"});
  adapter_case("ADP-31", "no_tensors",
               [](Env& e, const std::string& a) {
                 edit_tensors(e.path(a + "/adapter_model.safetensors"),
                              [](NamedTensors& ts) { ts.clear(); });
               },
               {"adapter/adapter_model.safetensors: "});
  adapter_case("ADP-32", "only_a",
               [](Env& e, const std::string& a) {
                 edit_tensors(e.path(a + "/adapter_model.safetensors"),
                              [](NamedTensors& ts) { remove_tensor(ts, kAdapterB); });
               },
               {"tensor '" + kAdapterB + "'"});
  adapter_case("ADP-33", "integer_tensors",
               [](Env& e, const std::string& a) {
                 edit_tensors(e.path(a + "/adapter_model.safetensors"), [](NamedTensors& ts) {
                   for (auto& [n, v] : ts) v = v.to(at::kInt);
                 });
               },
               {"adapter/adapter_model.safetensors: "});
  adapter_case("ADP-34", "qalora_no_group", config_edit([](ojson& j) {
                 j["use_qalora"] = true;
                 j.erase("qalora_group_size");
               }),
               {"adapter/adapter_config.json: field 'qalora_group_size'", "got null"});
  adapter_case("ADP-34", "qalora_group_zero", config_edit([](ojson& j) {
                 j["use_qalora"] = true;
                 j["qalora_group_size"] = 0;
               }),
               {"adapter/adapter_config.json: field 'qalora_group_size'", "got 0"});
  adapter_case("ADP-39", "use_qalora_string",
               config_edit([](ojson& j) { j["use_qalora"] = "yes"; }),
               {"adapter/adapter_config.json: field 'use_qalora'", "got \"yes\""});
  adapter_case("ADP-40", "nan_lora_b",
               [poison](Env& e, const std::string& a) {
                 edit_tensors(e.path(a + "/adapter_model.safetensors"), poison(kAdapterB));
               },
               {"adapter/adapter_model.safetensors: tensor '" + kAdapterB + "'"});
  add(c, "ADP-40", "nan_init_from", "qtrain",
      [poison](Env& e) {
        const std::string a = adapter_copy(e);
        edit_tensors(e.path(a + "/adapter_model.safetensors"), poison(kAdapterA));
        return recipe(e) + " adapter.init_from=" + a;
      },
      {"adapter/adapter_model.safetensors: tensor '" + kAdapterA + "'"});
  adapter_case("ADP-35", "foreign_module",
               [](Env& e, const std::string& a) {
                 edit_tensors(e.path(a + "/adapter_model.safetensors"), [](NamedTensors& ts) {
                   for (auto& [n, v] : ts) {
                     if (n.find("model.layers.0.") != std::string::npos)
                       n = replace_once(n, "model.layers.0.", "model.layers.7.");
                   }
                 });
               },
               {"adapter/adapter_model.safetensors: tensor 'base_model.model.model.layers.7."});
  adapter_case("ADP-36", "qalora_on_fp32", config_edit([](ojson& j) {
                 j["use_qalora"] = true;
                 j["qalora_group_size"] = 32;
               }),
               {"adapter/adapter_model.safetensors: tensor 'model.layers.0."});
  adapter_case("ADP-37", "other_model",
               [](Env& e, const std::string& a) {
                 edit_tensors(e.path(a + "/adapter_model.safetensors"), [](NamedTensors& ts) {
                   for (auto& [n, v] : ts)
                     if (n == kAdapterA) v = at::zeros({v.size(0), 32});
                 });
               },
               {"tensor '" + kAdapterA + "'", "[4, 32]", "[4, 64]"});
  add(c, "ADP-38", "init_from_qalora", "qtrain",
      [](Env& e) {
        return recipe(e) +
               " adapter.type=qalora quantization.type=int4 quantization.group_size=32"
               " adapter.init_from=" +
               adapter_copy(e);
      },
      {"field 'adapter.init_from'"});
  // A failed export over an existing output (with --overwrite) leaves the old output in place.
  add(c, "ADP-20", "qexport_overwrite_keeps_old", "qexport",
      [](Env& e) {
        const std::string a = adapter_copy(e);
        edit_json(e.path(a + "/adapter_config.json"), [](ojson& j) { j["r"] = -1; });
        write(e.path("out/adapter_config.json"), "{\"old\": true}\n");
        write(e.path("out/README.md"), "old export\n");
        keep_tree(e, "out");
        return a + " -f adapter -o out --overwrite";
      },
      {"adapter/adapter_config.json: field 'r'"});

  // ---- 9. Training ---------------------------------------------------------------------------
  add(c, "TRN-01", "existing_run", "qtrain",
      [](Env& e) {
        const std::string run = run_copy(e);
        keep_tree(e, run);
        return recipe(e);
      },
      {"run: field 'output.dir'"});
  add(c, "TRN-10", "finished_without_checkpoints", "qtrain",
      [](Env& e) {
        const std::string run = run_copy(e);
        fs::remove_all(e.path(run + "/checkpoints"));
        keep_tree(e, run);
        return recipe(e) + " --resume";
      },
      {"run: field 'output.dir'", "the run has finished"});
  add(c, "TRN-12", "run_in_use", "qtrain",
      [](Env& e) {
        const std::string run = run_copy(e);
        hold_run_lock(e.path(run));
        keep_tree(e, run);
        return recipe(e) + " --resume";
      },
      {"run: field 'output.dir'", "(pid " + std::to_string(::getpid()) + " on "});
  add(c, "TRN-13", "lock_file_is_a_directory", "qtrain",
      [](Env& e) {
        const std::string run = run_copy(e);
        fs::create_directories(e.path(run + "/" + kRunLockFile));
        keep_tree(e, run);
        return recipe(e) + " --resume";
      },
      {"run/.qtrain.lock: ", "Is a directory"});
  add(c, "TRN-02", "gpt2_modules", "qtrain",
      [](Env& e) { return recipe(e) + " 'adapter.target_modules=[c_attn]'"; },
      {"field 'target_modules'", "[c_attn]"});
  add(c, "TRN-05", "output_below_file", "qtrain",
      [](Env& e) {
        write(e.path("file"), "x");
        e.keep["file"] = "x";
        return recipe(e) + " output.dir=file/run";
      },
      {"file/run: "});
  add(c, "TRN-04", "tokenizer_larger", "qtrain",
      [](Env& e) {
        const std::string m = bpe_model(e);
        grow_bpe_vocab(e.path(m + "/tokenizer.json"));
        return recipe(e) + " model.path=" + m;
      },
      {"field 'model.path'", "401 tokens", "384 embeddings"});
  // 9.3 resuming: each case damages the newest checkpoint of a copied run.
  auto resume_case = [&c](const std::string& id, const std::string& name,
                          std::function<void(Env&, const std::string&)> damage,
                          std::vector<std::string> expect, const std::string& overrides = "",
                          const std::string& finding = "") {
    add(
        c, id, name, "qtrain",
        [damage, overrides](Env& e) {
          const std::string run = run_copy(e);
          const std::string ckpt = latest_checkpoint(e, run);
          damage(e, ckpt);
          keep_tree(e, run);
          return recipe(e) + " --resume training.max_steps=4 " + overrides;
        },
        expect, finding);
  };
  auto state_edit = [](std::function<void(ojson&)> edit) {
    return [edit](Env& e, const std::string& ckpt) {
      edit_json(e.path(ckpt + "/trainer_state.json"), edit);
    };
  };
  const std::string state_file = "/trainer_state.json: ";
  // TRN-30 (no trainer_state.json) is not reachable this way any more: a checkpoint without it is
  // skipped as incomplete (tests/trainer/test_crash_safety.cpp checks that fallback).
  resume_case("TRN-31", "not_json",
              [](Env& e, const std::string& ckpt) {
                write(e.path(ckpt + "/trainer_state.json"), "{\"step\": ");
              },
              {state_file});
  resume_case(
      "TRN-43", "array",
      [](Env& e, const std::string& ckpt) { write(e.path(ckpt + "/trainer_state.json"), "[2]"); },
      {state_file});
  resume_case("TRN-44", "no_step", state_edit([](ojson& j) { j.erase("step"); }),
              {state_file + "field 'step'"});
  resume_case("TRN-44", "no_cursor_epoch", state_edit([](ojson& j) { j["cursor"].erase("epoch"); }),
              {state_file + "field 'cursor.epoch'"});
  resume_case("TRN-45", "cursor_number", state_edit([](ojson& j) { j["cursor"] = 3; }),
              {state_file + "field 'cursor'"});
  resume_case("TRN-46", "negative_step", state_edit([](ojson& j) { j["step"] = -1; }),
              {state_file + "field 'step'", ">= 0, got -1"});
  resume_case("TRN-46", "position_string",
              state_edit([](ojson& j) { j["cursor"]["position"] = "3"; }),
              {state_file + "field 'cursor.position'", "got \"3\""});
  resume_case("TRN-46", "world_size_zero", state_edit([](ojson& j) { j["world_size"] = 0; }),
              {state_file + "field 'world_size'", ">= 1, got 0"});
  add(c, "TRN-46", "keeps_run_info", "qtrain",
      [](Env& e) {
        const std::string run = run_copy(e);
        edit_json(e.path(latest_checkpoint(e, run) + "/trainer_state.json"),
                  [](ojson& j) { j["step"] = -1; });
        keep_tree(e, run);
        return recipe(e) + " --resume training.max_steps=4";
      },
      {"field 'step'"});
  resume_case("TRN-47", "eval_loss_string",
              state_edit([](ojson& j) { j["first_eval_loss"] = "low"; }),
              {state_file + "field 'first_eval_loss'"});
  resume_case("TRN-34", "world_size", state_edit([](ojson& j) { j["world_size"] = 2; }),
              {state_file, "2 ranks", "resume with 2 ranks"});
  resume_case("TRN-40", "cursor_past_epoch",
              state_edit([](ojson& j) { j["cursor"]["position"] = 100000; }), {"batch 100000"});
  resume_case(
      "TRN-33", "rank_changed", [](Env&, const std::string&) {}, {"lora_A.weight"}, "adapter.r=8");
  resume_case(
      "TRN-32", "target_added", [](Env&, const std::string&) {},
      {"/adapter_model.safetensors: tensor 'lm_head'"},
      "'adapter.target_modules=[q_proj, lm_head]'");
  resume_case(
      "TRN-39", "targets_subset", [](Env&, const std::string&) {},
      {"/optimizer.safetensors: tensor 'model.layers.0.mlp.down_proj.lora_A.weight.exp_avg'"},
      "'adapter.target_modules=[q_proj, v_proj]'");
  const std::string entry = "model.layers.0.mlp.down_proj.lora_A.weight";
  auto optimizer_edit = [](std::function<void(NamedTensors&)> edit) {
    return [edit](Env& e, const std::string& ckpt) {
      edit_tensors(e.path(ckpt + "/optimizer.safetensors"), edit);
    };
  };
  resume_case("TRN-35", "entry_removed", optimizer_edit([entry](NamedTensors& ts) {
                remove_tensor(ts, entry + ".exp_avg_sq");
              }),
              {"tensor '" + entry + ".exp_avg_sq'"});
  resume_case("TRN-36", "entry_dtype", optimizer_edit([entry](NamedTensors& ts) {
                for (auto& [n, v] : ts)
                  if (n == entry + ".exp_avg") v = v.to(at::kDouble);
              }),
              {"tensor '" + entry + ".exp_avg'"});
  resume_case("TRN-37", "entry_shape", optimizer_edit([entry](NamedTensors& ts) {
                for (auto& [n, v] : ts)
                  if (n == entry + ".exp_avg") v = at::zeros({4, 64});
              }),
              {"tensor '" + entry + ".exp_avg'", "[4, 64]", "[4, 128]"});
  resume_case("TRN-38", "negative_step", optimizer_edit([entry](NamedTensors& ts) {
                for (auto& [n, v] : ts)
                  if (n == entry + ".step") v = at::full({}, -3, at::kLong);
              }),
              {"tensor '" + entry + ".step'", "step -3"});
  resume_case("TRN-48", "nan_moment", optimizer_edit([entry, poison](NamedTensors& ts) {
                poison(entry + ".exp_avg_sq")(ts);
              }),
              {"/optimizer.safetensors: tensor '" + entry + ".exp_avg_sq'"});
  resume_case("TRN-49", "step_past_total",
              state_edit([](ojson& j) { j["step"] = int64_t{1} << 62; }),
              {state_file + "field 'step'", "4611686018427387904", "the 4 steps"});
  // rng.safetensors as LibTorch's set_state would have refused it (exit 70, its own words).
  auto rng_edit = [](std::function<void(NamedTensors&)> edit) {
    return [edit](Env& e, const std::string& ckpt) {
      edit_tensors(e.path(ckpt + "/rng.safetensors"), edit);
    };
  };
  resume_case("TRN-50", "rng_renamed", rng_edit([](NamedTensors& ts) {
                for (auto& [n, v] : ts)
                  if (n == "cpu") n = "cpx";
              }),
              {"/rng.safetensors: tensor 'cpx'"});
  resume_case("TRN-51", "rng_dtype", rng_edit([](NamedTensors& ts) {
                for (auto& [n, v] : ts)
                  if (n == "cpu") v = v.to(at::kInt);
              }),
              {"/rng.safetensors: tensor 'cpu'"});
  resume_case("TRN-52", "rng_truncated", rng_edit([](NamedTensors& ts) {
                for (auto& [n, v] : ts)
                  if (n == "cpu") v = v.slice(0, 0, 100).clone();
              }),
              {"/rng.safetensors: tensor 'cpu'", "100 bytes"});
  resume_case("TRN-53", "rng_empty", rng_edit([](NamedTensors& ts) { ts.clear(); }),
              {"/rng.safetensors: "});

  add(c, "TRN-03", "qalora_lm_head", "qtrain",
      [](Env& e) {
        return recipe(e) +
               " quantization.type=int4 quantization.group_size=32 adapter.type=qalora"
               " 'adapter.target_modules=[q_proj, lm_head]'";
      },
      {"tensor 'lm_head'"});
  add(c, "TRN-11", "rank_wider_than_model", "qtrain",
      [](Env& e) { return recipe(e) + " adapter.r=1000"; },
      {"field 'adapter.r'", "is 1000", "128 outputs"});
  add(c, "TRN-09", "tensorboard_is_file", "qtrain",
      [](Env& e) {
        write(e.path("fresh/tensorboard"), "x");
        return recipe(e) + " output.dir=fresh output.tensorboard=true";
      },
      {"fresh/tensorboard/events.out.tfevents."});
  add(c, "TRN-20", "diverged", "qtrain",
      [](Env& e) { return recipe(e) + " output.dir=fresh training.lr=1e30"; },
      {"field 'training.on_nonfinite'", "(loss nan"});

  // ---- 10. Distributed (launcher environment, checked before any model loads) -----------------
  add(c, "DST-01", "world_size_text", "qtrain",
      [](Env& e) {
        e.env = "WORLD_SIZE=abc RANK=0";
        return recipe(e);
      },
      {"'abc'"});
  add(c, "DST-03", "rank_outside", "qtrain",
      [](Env& e) {
        e.env = "WORLD_SIZE=2 RANK=5";
        return recipe(e);
      },
      {"rank 5", "world size 2", "torchrun"});
  add(c, "DST-04", "port", "qtrain",
      [](Env& e) {
        e.env = "WORLD_SIZE=2 RANK=0 MASTER_PORT=70000";
        return recipe(e);
      },
      {"70000"});
  add(c, "DST-05", "backend_none", "qtrain",
      [](Env& e) {
        e.env = "WORLD_SIZE=2 RANK=0";
        return recipe(e) + " distributed.backend=none";
      },
      {"field 'distributed.backend'", "rank 0 of 2"});

  // ---- More model, tokenizer and bitsandbytes cases -------------------------------------------
  add(c, "MOD-06", "no_such_gpu", "qeval",
      [](Env& e) { return eval_args(model(e), "--device cuda:7"); }, {"cuda:7"});
  add(c, "MOD-09", "config_is_directory", "qeval",
      [](Env& e) {
        const std::string m = model(e);
        replace_with_directory(e.path(m + "/config.json"));
        return eval_args(m);
      },
      {"model/config.json: "});
  add(c, "REC-90", "synthetic_init_from", "qtrain",
      [](Env& e) {
        return recipe(e) + " model.synthetic=true adapter.init_from=" + adapter_copy(e) +
               " --dry-run";
      },
      {"field 'model.synthetic'"});
  bpe_case("TOK-25", "type_number", [](ojson& j) { j["model"]["type"] = 5; },
           {"field 'model.type'"});
  bpe_case("TOK-26", "unk_number", [](ojson& j) { j["model"]["unk_token"] = 5; },
           {"field 'model.unk_token'"});
  bpe_case("TOK-27", "vocab_id_text", [](ojson& j) { j["model"]["vocab"]["he"] = "x"; },
           {"field 'model.vocab"});
  bpe_case("TOK-29", "dropout_text", [](ojson& j) { j["model"]["dropout"] = "x"; },
           {"field 'model.dropout'"});
  bpe_case("TOK-31", "subword_prefix",
           [](ojson& j) { j["model"]["continuing_subword_prefix"] = "##"; },
           {"field 'model.continuing_subword_prefix'"});
  bpe_case("TOK-35", "merge_number", [](ojson& j) { j["model"]["merges"].push_back(5); },
           {"field 'model.merges[2]'"});
  bpe_case("TOK-37", "single_word", [](ojson& j) { j["added_tokens"][0]["single_word"] = true; },
           {"field 'added_tokens[0].single_word'"});
  bpe_case("TOK-39", "added_id_gap", [](ojson& j) { j["added_tokens"][0]["id"] = 300; },
           {"field 'added_tokens[0].id'", "id 300"});
  bpe_case("TOK-41", "split_after_byte_level",
           [](ojson& j) {
             auto& list = j["pre_tokenizer"]["pretokenizers"];
             list = ojson::array({list[1], list[0]});
           },
           {"field 'pre_tokenizer"});
  bpe_case("TOK-42", "behavior",
           [](ojson& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; },
           {"\"Removed\""});
  bpe_case("TOK-43", "inverted",
           [](ojson& j) { j["pre_tokenizer"]["pretokenizers"][0]["invert"] = true; },
           {"field 'pre_tokenizer"});
  bpe_case("TOK-44", "pattern_kind",
           [](ojson& j) {
             j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Glob", "*"}};
           },
           {"field 'pre_tokenizer"});
  bpe_case(
      "TOK-45", "pattern_h",
      [](ojson& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\h+|\\S+"; },
      {"pattern'"});
  bpe_case("TOK-48", "no_byte_level",
           [](ojson& j) {
             auto& list = j["pre_tokenizer"]["pretokenizers"];
             list = ojson::array({list[0]});
           },
           {"field 'pre_tokenizer'"});
  bpe_case("TOK-56", "roberta",
           [](ojson& j) {
             j["post_processor"] = {{"type", "RobertaProcessing"}};
           },
           {"\"RobertaProcessing\""});
  add(c, "TOK-60", "eval_text_not_utf8", "qeval",
      [](Env& e) {
        write(e.path("e.txt"), std::string("caf\xe9 au lait, bien s\xfbr, ") + "encore");
        return replace_once(eval_args(bpe_model(e)), g->eval_txt, "e.txt");
      },
      {});
  add(c, "TOK-60", "names_the_text", "qeval",
      [](Env& e) {
        write(e.path("e.txt"), std::string("caf\xe9 au lait"));
        return replace_once(eval_args(bpe_model(e)), g->eval_txt, "e.txt");
      },
      {"e.txt: text to encode"});
  c.push_back(
      {"EXP-30",
       "gguf_unknown_pre_tokenizer",
       "qexport",
       [](Env& e) { return adapter_copy(e) + " --base " + bpe_model(e) + " -f gguf -o out.gguf"; },
       {"field 'pre_tokenizer'"}});
  // bitsandbytes 4-bit bases (qeval --precision nf4 on the NF4 export of the run)
  auto bnb_config_case = [&c](const std::string& id, const std::string& name,
                              std::function<void(ojson&)> edit, std::vector<std::string> expect) {
    expect.insert(expect.begin(), "nf4/config.json: ");
    add(
        c, id, name, "qeval",
        [edit](Env& e) {
          const std::string m = nf4_model(e);
          edit_json(e.path(m + "/config.json"),
                    [edit](ojson& j) { edit(j["quantization_config"]); });
          return replace_once(eval_args(m), "--precision fp32", "--precision nf4");
        },
        expect);
  };
  add(c, "BNB-01", "not_object", "qeval",
      [](Env& e) {
        const std::string m = nf4_model(e);
        edit_json(e.path(m + "/config.json"), [](ojson& j) { j["quantization_config"] = 5; });
        return replace_once(eval_args(m), "--precision fp32", "--precision nf4");
      },
      {"nf4/config.json: field 'quantization_config'"});
  bnb_config_case("BNB-02", "no_method", [](ojson& q) { q.erase("quant_method"); },
                  {"field 'quantization_config.quant_method'"});
  bnb_config_case("BNB-03", "gptq", [](ojson& q) { q["quant_method"] = "gptq"; },
                  {"field 'quantization_config.quant_method'", "\"gptq\""});
  bnb_config_case("BNB-04", "int8", [](ojson& q) { q["load_in_8bit"] = true; },
                  {"field 'quantization_config.load_in_8bit'"});
  bnb_config_case("BNB-05", "not_4bit",
                  [](ojson& q) {
                    q["load_in_4bit"] = false;
                    q["_load_in_4bit"] = false;
                  },
                  {"field 'quantization_config.load_in_4bit'"});
  bnb_config_case("BNB-06", "flag_text", [](ojson& q) { q["bnb_4bit_use_double_quant"] = "yes"; },
                  {"field 'quantization_config.bnb_4bit_use_double_quant'"});
  bnb_config_case("BNB-07", "quant_type", [](ojson& q) { q["bnb_4bit_quant_type"] = "int4"; },
                  {"field 'quantization_config.bnb_4bit_quant_type'"});
  bnb_config_case("BNB-08", "compute_dtype",
                  [](ojson& q) { q["bnb_4bit_compute_dtype"] = "float8"; },
                  {"field 'quantization_config.bnb_4bit_compute_dtype'"});
  bnb_config_case("BNB-09", "storage", [](ojson& q) { q["bnb_4bit_quant_storage"] = "uint4"; },
                  {"field 'quantization_config.bnb_4bit_quant_storage'"});
  bnb_config_case("BNB-10", "skip_number", [](ojson& q) { q["llm_int8_skip_modules"] = 5; },
                  {"field 'quantization_config.llm_int8_skip_modules'"});
  bnb_config_case("BNB-11", "skip_entry",
                  [](ojson& q) {
                    q["llm_int8_skip_modules"] = ojson::array({"lm_head", 1});
                  },
                  {"field 'quantization_config.llm_int8_skip_modules'"});
  auto bnb_weights_case = [&c](const std::string& id, const std::string& name,
                               std::function<void(NamedTensors&)> edit,
                               std::vector<std::string> expect) {
    expect.insert(expect.begin(), "nf4/model.safetensors: ");
    add(
        c, id, name, "qeval",
        [edit](Env& e) {
          const std::string m = nf4_model(e);
          edit_tensors(e.path(m + "/model.safetensors"), edit);
          return replace_once(eval_args(m), "--precision fp32", "--precision nf4");
        },
        expect);
  };
  auto quant_state_case = [&bnb_weights_case](const std::string& id, const std::string& name,
                                              std::function<void(ojson&)> edit,
                                              std::vector<std::string> expect) {
    bnb_weights_case(
        id, name,
        [edit](NamedTensors& ts) {
          ojson state = ojson::parse(quant_state_text(ts, kQProj));
          edit(state);
          set_quant_state(ts, kQProj, state.dump());
        },
        expect);
  };
  const std::string qs = "tensor '" + kQProj + ".quant_state.bitsandbytes__nf4'";
  // Without its quant_state the packed weight reads as a dense one and its state entries as
  // tensors the model lacks.
  add(c, "CKP-61", "bnb_without_quant_state", "qeval",
      [](Env& e) {
        const std::string m = nf4_model(e);
        edit_tensors(e.path(m + "/model.safetensors"), [](NamedTensors& ts) {
          remove_tensor(ts, kQProj + ".quant_state.bitsandbytes__nf4");
        });
        return replace_once(eval_args(m), "--precision fp32", "--precision nf4");
      },
      {"nf4: tensor '" + kQProj + ".absmax'", "4 tensor(s)"});
  bnb_weights_case("BNB-22", "quant_state_float",
                   [](NamedTensors& ts) {
                     for (auto& [n, v] : ts)
                       if (n == kQProj + ".quant_state.bitsandbytes__nf4") v = v.to(at::kFloat);
                   },
                   {qs});
  bnb_weights_case("BNB-23", "quant_state_not_json",
                   [](NamedTensors& ts) { set_quant_state(ts, kQProj, "{\"quant_type\": "); },
                   {qs});
  bnb_weights_case("BNB-24", "quant_state_array",
                   [](NamedTensors& ts) { set_quant_state(ts, kQProj, "[64]"); }, {qs});
  quant_state_case("BNB-25", "unknown_key", [](ojson& s) { s["scale"] = 1; },
                   {qs, "field 'scale'"});
  quant_state_case("BNB-26", "no_blocksize", [](ojson& s) { s.erase("blocksize"); },
                   {qs, "field 'blocksize'"});
  quant_state_case("BNB-27", "blocksize_zero", [](ojson& s) { s["blocksize"] = 0; },
                   {qs, "field 'blocksize'"});
  quant_state_case("BNB-28", "dtype_number", [](ojson& s) { s["dtype"] = 5; },
                   {qs, "field 'dtype'"});
  quant_state_case("BNB-29", "quant_type", [](ojson& s) { s["quant_type"] = "int4"; },
                   {qs, "field 'quant_type'"});
  quant_state_case("BNB-30", "fp4_in_nf4", [](ojson& s) { s["quant_type"] = "fp4"; },
                   {qs, "field 'quant_type'"});
  quant_state_case("BNB-31", "blocksize_100", [](ojson& s) { s["blocksize"] = 100; },
                   {qs, "field 'blocksize'"});
  quant_state_case("BNB-32", "dtype_int8", [](ojson& s) { s["dtype"] = "int8"; },
                   {qs, "field 'dtype'"});
  quant_state_case("BNB-33", "shape_text", [](ojson& s) { s["shape"] = "64x64"; },
                   {qs, "field 'shape'"});
  quant_state_case("BNB-34", "shape_negative",
                   [](ojson& s) {
                     s["shape"] = ojson::array({-64, 64});
                   },
                   {qs, "field 'shape'"});
  quant_state_case("BNB-46", "shape_overflow",
                   [](ojson& s) {
                     s["shape"] = ojson::array({int64_t{1} << 40, 0, int64_t{1} << 40});
                   },
                   {qs, "field 'shape'", "2^48"});
  quant_state_case("BNB-35", "nested_dtype", [](ojson& s) { s["nested_dtype"] = "float16"; },
                   {qs, "field 'nested_dtype'"});
  quant_state_case("BNB-36", "nested_offset", [](ojson& s) { s["nested_offset"] = "x"; },
                   {qs, "field 'nested_offset'"});
  bnb_weights_case("BNB-37", "no_packed_weight",
                   [](NamedTensors& ts) { remove_tensor(ts, kQProj); },
                   {"tensor '" + kQProj + "'"});
  bnb_weights_case("BNB-38", "packed_shape",
                   [](NamedTensors& ts) {
                     for (auto& [n, v] : ts)
                       if (n == kQProj) v = at::zeros({1024, 1}, at::kByte);
                   },
                   {"tensor '" + kQProj + "'", "[1024, 1]"});
  bnb_weights_case("BNB-40", "no_absmax",
                   [](NamedTensors& ts) { remove_tensor(ts, kQProj + ".absmax"); },
                   {"tensor '" + kQProj + ".absmax'"});
  bnb_weights_case("BNB-41", "absmax_dtype",
                   [](NamedTensors& ts) {
                     for (auto& [n, v] : ts)
                       if (n == kQProj + ".absmax") v = v.to(at::kFloat);
                   },
                   {"tensor '" + kQProj + ".absmax'"});
  bnb_weights_case("BNB-42", "absmax_shape",
                   [](NamedTensors& ts) {
                     for (auto& [n, v] : ts)
                       if (n == kQProj + ".absmax") v = at::zeros({32}, at::kByte);
                   },
                   {"tensor '" + kQProj + ".absmax'", "[32]"});
  bnb_weights_case("BNB-43", "custom_codebook",
                   [](NamedTensors& ts) {
                     for (auto& [n, v] : ts)
                       if (n == kQProj + ".quant_map") v = v * 2;
                   },
                   {"tensor '" + kQProj + ".quant_map'"});

  // ---- 11. Export ----------------------------------------------------------------------------
  add(c, "EXP-01", "missing", "qexport", [](Env&) { return std::string("nope -f adapter -o out"); },
      {"nope: "});
  add(c, "EXP-02", "empty_dir", "qexport",
      [](Env& e) {
        fs::create_directories(e.path("empty"));
        return std::string("empty -f adapter -o out");
      },
      {"empty: "});
  add(c, "EXP-03", "run_without_adapter", "qexport",
      [](Env& e) {
        const std::string run = run_copy(e);
        fs::remove_all(e.path(run + "/adapter"));
        fs::remove_all(e.path(run + "/checkpoints"));
        return run + " -f adapter -o out";
      },
      {"run: "});
  add(c, "EXP-04", "no_base", "qexport",
      [](Env& e) {
        const std::string a = adapter_copy(e);
        edit_json(e.path(a + "/adapter_config.json"),
                  [](ojson& j) { j.erase("base_model_name_or_path"); });
        return a + " -f merged-bf16 -o out";
      },
      {"adapter/adapter_config.json: field 'base_model_name_or_path'"});
  add(c, "EXP-05", "base_missing", "qexport",
      [](Env& e) {
        const std::string a = adapter_copy(e);
        edit_json(e.path(a + "/adapter_config.json"),
                  [](ojson& j) { j["base_model_name_or_path"] = "/nonexistent/base"; });
        return a + " -f merged-bf16 -o out";
      },
      {"adapter: ", "/nonexistent/base"});
  add(c, "EXP-06", "output_exists", "qexport",
      [](Env& e) {
        write(e.path("out/adapter_config.json"), "{\"old\": true}\n");
        write(e.path("out/adapter_model.safetensors"), "old weights\n");
        keep_tree(e, "out");
        return adapter_copy(e) + " -f adapter -o out";
      },
      {"/out: "});
  add(c, "EXP-06", "gguf_exists", "qexport",
      [](Env& e) {
        write(e.path("m.gguf"), "old gguf\n");
        e.keep["m.gguf"] = "old gguf\n";
        return adapter_copy(e) + " -f gguf -o m.gguf";
      },
      {"m.gguf: "});
  c.push_back(
      {"EXP-10",
       "trained_bare_adapter",
       "qexport",
       [](Env& e) { return adapter_copy(e) + " -f merged-bf16 --base-weights trained -o out"; },
       {"adapter"}});
  add(c, "EXP-11", "foreign_module", "qexport",
      [](Env& e) {
        const std::string a = adapter_copy(e);
        edit_tensors(e.path(a + "/adapter_model.safetensors"), [](NamedTensors& ts) {
          for (auto& [n, v] : ts) {
            if (n.find("model.layers.0.") != std::string::npos)
              n = replace_once(n, "model.layers.0.", "model.layers.7.");
          }
        });
        return a + " -f merged-bf16 -o out";
      },
      {"model.layers.7."});
  add(c, "EXP-13", "other_model", "qexport",
      [](Env& e) {
        const std::string a = adapter_copy(e);
        edit_tensors(e.path(a + "/adapter_model.safetensors"), [](NamedTensors& ts) {
          for (auto& [n, v] : ts)
            if (n == kAdapterA) v = at::zeros({v.size(0), 32});
        });
        return a + " -f merged-bf16 -o out";
      },
      {"model.layers.0.self_attn.q_proj"});
  add(c, "EXP-14", "gptq_lora", "qexport",
      [](Env& e) { return adapter_copy(e) + " -f gptq-int4 -o out"; });
  add(c, "EXP-23", "gguf_no_tokenizer", "qexport",
      [](Env& e) {
        const std::string m = model(e, "base");
        fs::remove(e.path(m + "/tokenizer.model"));
        fs::remove(e.path(m + "/tokenizer.json"));
        return adapter_copy(e) + " --base " + m + " -f gguf -o out.gguf";
      },
      {"base: "});
  add(c, "EXP-50", "gemma3_gguf_attention_scale", "qexport",
      [](Env& e) {
        // qtiny's micro gemma3 has the fixture llama's shapes, so the fixture adapter merges in.
        std::string out;
        if (t::run_command("'" + tool_path("qtiny") + "' --out '" + e.path("gemma3") +
                               "' --arch gemma3 --preset micro",
                           &out) != 0) {
          throw std::runtime_error("qtiny --arch gemma3 failed: " + out);
        }
        edit_json(e.path("gemma3/config.json"), [](ojson& j) { j["query_pre_attn_scalar"] = 64; });
        return adapter_copy(e) + " --base gemma3 -f gguf -o out.gguf";
      },
      {"field 'query_pre_attn_scalar'", "llama.cpp scales attention by 16^-0.5"});

  // ---- 12. qeval / qgen / qtiny ---------------------------------------------------------------
  add(c, "EVL-01", "no_held_out", "qeval", [](Env& e) { return "--recipe " + recipe(e); },
      {"recipe.yaml: field 'data.eval_fraction'"});
  add(c, "EVL-02", "missing_data", "qeval",
      [](Env& e) { return replace_once(eval_args(model(e)), g->eval_txt, "nope.txt"); },
      {"nope.txt: "});
  add(c, "EVL-03", "bad_line", "qeval",
      [](Env& e) {
        return replace_once(eval_args(model(e)), g->eval_txt,
                            jsonl(e, {R"({"text": "hello there"})", "{text"}, "e.jsonl"));
      },
      {"e.jsonl:2: "});
  add(c, "EVL-04", "no_field", "qeval",
      [](Env& e) {
        return replace_once(eval_args(model(e)), g->eval_txt,
                            jsonl(e, {R"({"content": "hello there"})"}, "e.jsonl"));
      },
      {"e.jsonl:1: ", "\"text\""});
  add(c, "EVL-05", "empty", "qeval",
      [](Env& e) {
        write(e.path("e.txt"), "");
        return replace_once(eval_args(model(e)), g->eval_txt, "e.txt");
      },
      {"e.txt: "});
  add(c, "GEN-01", "unfinished_run", "qgen",
      [](Env& e) {
        const std::string run = run_copy(e);
        fs::remove_all(e.path(run + "/adapter"));
        return run + " --prompt hi -n 1";
      },
      {"run: "});
  add(c, "TNY-01", "out_is_file", "qtiny",
      [](Env& e) {
        write(e.path("m"), "a file\n");
        e.keep["m"] = "a file\n";
        return std::string("--out m --preset micro");
      },
      {"m: "});
  add(c, "TNY-02", "out_not_empty", "qtiny",
      [](Env& e) {
        write(e.path("m/config.json"), "{}\n");
        e.keep["m/config.json"] = "{}\n";
        return std::string("--out m --preset micro");
      },
      {"m: "});

  add(c, "GEN-02", "tokenizer_larger", "qgen",
      [](Env& e) {
        const std::string m = bpe_model(e);
        grow_bpe_vocab(e.path(m + "/tokenizer.json"));
        return m + " --prompt hi -n 1";
      },
      {"bpe: ", "401 tokens", "only 384"});
  add(c, "EXP-16", "qtiny_below_file", "qtiny",
      [](Env& e) {
        write(e.path("file"), "x");
        return std::string("--out file/m --preset micro");
      },
      {"file"});

  // ---- 13. Writing files ---------------------------------------------------------------------
  add(c, "IO-01", "json_dir_missing", "qeval",
      [](Env& e) { return eval_args(model(e), "--json nodir/t.json"); }, {"nodir/t.json"});
  add(c, "IO-01", "dataset_below_file", "qtiny",
      [](Env& e) {
        write(e.path("file"), "x");
        return std::string("--dataset file/d.jsonl");
      },
      {"file/d.jsonl: "});
  add(c, "IO-06", "export_below_file", "qexport",
      [](Env& e) {
        write(e.path("file"), "x");
        e.keep["file"] = "x";
        return adapter_copy(e) + " -f adapter -o file/out";
      },
      {"/file/out: ", "Not a directory"});
  const std::string too_long(300, 'n');
  add(c, "IO-07", "qexport_name_too_long", "qexport",
      [too_long](Env&) { return too_long + " -f adapter -o out"; }, {"File name too long"});
  add(c, "TRN-05", "output_dir_too_long", "qtrain",
      [too_long](Env& e) { return recipe(e) + " output.dir=" + too_long; }, {"File name too long"});
  // ---- 13. Reading files: size caps, special files, JSON nesting and duplicate keys
  auto to_dev_zero = [](Env& e, const std::string& relative) {
    fs::remove(e.path(relative));
    fs::create_symlink("/dev/zero", e.path(relative));
  };
  add(c, "IO-08", "recipe_dev_zero", "qtrain",
      [to_dev_zero](Env& e) {
        to_dev_zero(e, "r.yaml");
        return std::string("r.yaml --dry-run");
      },
      {"r.yaml: recipe is not", "character device"});
  add(c, "IO-08", "tokenizer_json_dev_zero", "qgen",
      [to_dev_zero](Env& e) {
        const std::string m = bpe_model(e);
        to_dev_zero(e, m + "/tokenizer.json");
        return m + " --prompt hi -n 1";
      },
      {"bpe/tokenizer.json: tokenizer.json is not"});
  add(c, "IO-08", "tokenizer_model_dev_zero", "qgen",
      [to_dev_zero](Env& e) {
        const std::string m = model(e);
        to_dev_zero(e, m + "/tokenizer.model");
        return m + " --prompt hi -n 1";
      },
      {"model/tokenizer.model: SentencePiece model is not"});
  add(c, "IO-08", "dataset_fifo", "qtrain",
      [](Env& e) {
        // A FIFO without a writer: refused at once instead of blocking the read.
        if (::mkfifo(e.path("d.jsonl").c_str(), 0600) != 0) throw std::runtime_error("mkfifo");
        return data_check(e, "data.path=d.jsonl");
      },
      {"d.jsonl: dataset file is not", "FIFO"});
  add(c, "IO-09", "recipe_over_1_mib", "qtrain",
      [](Env& e) {
        write(e.path("r.yaml"), g->recipe_text + "# " + std::string(1 << 20, 'x') + "\n");
        return std::string("r.yaml --dry-run");
      },
      {"r.yaml: recipe is larger than 1 MiB"});
  // The issue's reproduction: 100,000 levels of [ ] crashed every tool in dump() (70k sufficed).
  const std::string deep = std::string(100'000, '[') + "4" + std::string(100'000, ']');
  add(c, "IO-10", "config_json", "qgen",
      [deep](Env& e) {
        const std::string m = model(e);
        const std::string path = e.path(m + "/config.json");
        t::write_file(path, replace_once(t::read_file(path), "\"vocab_size\": 384",
                                         "\"vocab_size\": " + deep));
        return m + " --prompt hi -n 1";
      },
      {"model/config.json:", "field 'vocab_size[0][0]", "256 levels"});
  add(c, "IO-10", "adapter_config_json", "qexport",
      [deep](Env& e) {
        const std::string a = adapter_copy(e);
        const std::string path = e.path(a + "/adapter_config.json");
        t::write_file(path, replace_once(t::read_file(path), "\"r\": 4", "\"r\": " + deep));
        return a + " --base " + model(e) + " -f merged-bf16 -o out";
      },
      {"adapter/adapter_config.json:", "field 'r[0]"});
  resume_case("IO-10", "trainer_state_json",
              [deep](Env& e, const std::string& ckpt) {
                const std::string path = e.path(ckpt + "/trainer_state.json");
                const std::string text = t::read_file(path);
                t::write_file(path,
                              text.substr(0, text.rfind('}')) + ", \"unused\": " + deep + "}");
              },
              {"/trainer_state.json:", "field 'unused[0]"});
  add(c, "IO-11", "config_json", "qgen",
      [](Env& e) {
        const std::string m = model(e);
        const std::string path = e.path(m + "/config.json");
        const std::string text = t::read_file(path);
        t::write_file(path, replace_once(text, "\"vocab_size\": 384",
                                         "\"vocab_size\": 384,\n  \"vocab_size\": 385"));
        e.expect.push_back(
            "model/config.json:" + std::to_string(line_of(text, "\"vocab_size\"") + 1) + ": ");
        return m + " --prompt hi -n 1";
      },
      {"field 'vocab_size'", "'vocab_size'"});
  add(c, "IO-11", "jsonl_record", "qtrain",
      [](Env& e) {
        const std::string data =
            jsonl(e, {kGoodAlpaca, R"({"instruction": "a", "instruction": "b", "output": "c"})"});
        return data_check(e, "data.path=" + data);
      },
      {"bad.jsonl:2: field 'instruction'"});
  return c;
}

// ---------------------------------------------------------------------------------------------
// The test: SetUpTestSuite builds the fixtures, then sets up and runs every selected case on a
// few threads (each tool process is mostly LibTorch start-up); each TEST_P checks one outcome.

std::string case_key(const Case& c) {
  std::string name = c.id + "_" + c.name;
  for (char& ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return name;
}

struct Outcome {
  double seconds = 0;
  Env env;
  std::string args;
  std::string setup_error;
  Result result;
};

void make_fixtures() {
  g->model = g->root + "/fixtures/model";
  copy_tree(resolve_model_dir("builtin:micro"), g->model);
  g->bpe = g->root + "/fixtures/bpe";
  copy_tree(g->model, g->bpe);
  use_bpe_tokenizer(g->bpe);
  g->data = g->root + "/fixtures/data.jsonl";
  write_tiny_instruct_dataset(g->data, 48, 4);
  g->eval_txt = g->root + "/fixtures/eval.txt";
  std::string text;
  for (int i = 0; i < 4; ++i)
    text += "Permission is hereby granted, free of charge, to any person. ";
  t::write_file(g->eval_txt, text);
  g->recipe_text = base_recipe(g->model, g->data);
  // The finished run that the adapter, export and resume cases start from.
  const std::string dir = g->root + "/fixtures";
  t::write_file(dir + "/recipe.yaml", g->recipe_text);
  std::string out;
  const int code = t::run_command("cd '" + dir + "' && QTRAIN_CACHE_DIR='" + cache_dir() + "' '" +
                                      tool_path("qtrain") + "' recipe.yaml",
                                  &out);
  if (code == 0 && fs::exists(dir + "/run/adapter/adapter_config.json")) {
    g->run = dir + "/run";
    if (t::run_command(
            "'" + tool_path("qexport") + "' '" + g->run + "' -f nf4 -o '" + dir + "/nf4'", &out) ==
        0) {
      g->nf4 = dir + "/nf4";
    } else {
      g->run_error = "qexport -f nf4 failed:\n" + out;
    }
  } else {
    g->run_error = "qtrain exited " + std::to_string(code) + ":\n" + out;
  }
}

Outcome run_case(const Case& c) {
  Outcome o;
  o.env.dir = g->root + "/cases/" + case_key(c);
  fs::create_directories(o.env.dir);
  try {
    o.args = c.setup(o.env);
  } catch (const std::exception& e) {
    o.setup_error = e.what();
    return o;
  }
  const auto started = std::chrono::steady_clock::now();
  o.result = run_tool(c.tool, o.args, o.env);
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return o;
}

class ErrorCatalogue : public ::testing::TestWithParam<Case> {
 protected:
  static void SetUpTestSuite() {
    g = new Fixtures();
    g->scratch = new t::ScratchDir("qtrain-error-catalogue");
    g->root = g->scratch->path();
    g->catalogue = parse_catalogue(t::source_dir() + "/docs/errors.md");
    setenv("QTRAIN_CACHE_DIR", cache_dir().c_str(), 1);  // the tools get the same one
    make_fixtures();

    // The cases this run selects (--gtest_filter), minus the known findings.
    std::set<std::string> selected;
    const ::testing::TestSuite* suite = ::testing::UnitTest::GetInstance()->current_test_suite();
    for (int i = 0; suite != nullptr && i < suite->total_test_count(); ++i) {
      const ::testing::TestInfo* info = suite->GetTestInfo(i);
      const std::string name = info->name();
      if (info->should_run()) selected.insert(name.substr(name.find('/') + 1));
    }
    std::vector<Case> todo;
    for (const Case& c : all_cases()) {
      if (c.finding.empty() && selected.count(case_key(c))) todo.push_back(c);
    }
    outcomes_ = new std::map<std::string, Outcome>();
    std::mutex mutex;
    std::atomic<size_t> next{0};
    auto worker = [&] {
      for (size_t i = next++; i < todo.size(); i = next++) {
        Outcome o = run_case(todo[i]);
        const std::lock_guard<std::mutex> lock(mutex);
        (*outcomes_)[case_key(todo[i])] = std::move(o);
      }
    };
    const unsigned threads = std::max(2u, std::min(4u, std::thread::hardware_concurrency()));
    std::vector<std::thread> pool;
    for (unsigned i = 0; i < threads; ++i) pool.emplace_back(worker);
    for (auto& thread : pool) thread.join();
  }
  static void TearDownTestSuite() {
    std::printf(
        "[ catalogue ] %d cases ran (%d skipped as findings), %zu distinct IDs checked, %zu of "
        "them passing; docs/errors.md has %zu IDs\n",
        ran_, skipped_, ids_.size(), passing_.size(), g->catalogue.size());
    std::vector<std::pair<double, std::string>> slowest;
    for (const auto& [name, o] : *outcomes_) slowest.emplace_back(o.seconds, name);
    std::sort(slowest.rbegin(), slowest.rend());
    std::printf("[ catalogue ] slowest:");
    for (size_t i = 0; i < slowest.size() && i < 6; ++i) {
      std::printf(" %s %.1fs", slowest[i].second.c_str(), slowest[i].first);
    }
    std::printf("\n");
    delete outcomes_;
    outcomes_ = nullptr;
    delete g->scratch;
    delete g;
    g = nullptr;
  }
  static int ran_;
  static int skipped_;
  static std::set<std::string> ids_;
  static std::set<std::string> passing_;
  static std::map<std::string, Outcome>* outcomes_;
};
int ErrorCatalogue::ran_ = 0;
int ErrorCatalogue::skipped_ = 0;
std::set<std::string> ErrorCatalogue::ids_;
std::set<std::string> ErrorCatalogue::passing_;
std::map<std::string, Outcome>* ErrorCatalogue::outcomes_ = nullptr;

TEST_P(ErrorCatalogue, ExitCodeAndMessageMatchTheCatalogue) {
  const Case& c = GetParam();
  const std::string label = c.id + " (" + c.name + ")";
  if (!c.finding.empty()) {
    ++skipped_;
    GTEST_SKIP() << label << ": FINDING: " << c.finding;
  }
  ++ran_;
  ids_.insert(c.id);
  const auto row_it = g->catalogue.find(c.id);
  ASSERT_NE(row_it, g->catalogue.end()) << label << ": no row " << c.id << " in docs/errors.md";
  const DocRow& row = row_it->second;
  const auto outcome_it = outcomes_->find(case_key(c));
  ASSERT_NE(outcome_it, outcomes_->end()) << label << ": the case did not run";
  const Outcome& o = outcome_it->second;
  ASSERT_TRUE(o.setup_error.empty()) << label << ": setup failed: " << o.setup_error;
  const Result& r = o.result;
  const std::string shown = label + ": `" + c.tool + " " + o.args + "` in " + o.env.dir +
                            "\n--- exit " + std::to_string(r.code) + ", stderr:\n" + r.err;
  EXPECT_EQ(r.code, row.exit_code) << shown;

  // The error line: `<tool>: [context: ]<message>[ (set by override '...')]`.
  const std::regex line_re("^" + regex_escape(c.tool) + ": (?:.*: )?" + row.pattern +
                           "(?: \\(set by override '.*'\\))?$");
  std::string error_line;
  std::istringstream lines(r.err);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(c.tool + ": ", 0) == 0 && std::regex_match(line, line_re)) {
      error_line = line;
      break;
    }
  }
  EXPECT_FALSE(error_line.empty()) << label << ": no stderr line matches the catalogue's `"
                                   << row.literal << "`\n  regex: " << row.pattern << "\n"
                                   << shown;
  std::vector<std::string> expect = c.expect;
  expect.insert(expect.end(), o.env.expect.begin(), o.env.expect.end());
  for (const std::string& part : expect) {
    EXPECT_NE(error_line.find(part), std::string::npos)
        << label << ": the error line lacks \"" << part << "\"\n"
        << shown;
  }
  for (const auto& [file, contents] : o.env.keep) {
    const std::string p = o.env.path(file);
    ASSERT_TRUE(fs::exists(p)) << label << ": the failed command removed " << file << "\n" << shown;
    EXPECT_EQ(t::read_file(p), contents) << label << ": the failed command changed " << file;
  }
  if (!HasFailure()) {
    passing_.insert(c.id);
    fs::remove_all(o.env.dir);  // failing cases keep their inputs until the suite ends
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return case_key(info.param);
}

INSTANTIATE_TEST_SUITE_P(Docs, ErrorCatalogue, ::testing::ValuesIn(all_cases()), case_name);

// The parser itself: placeholders, an optional part, an escaped pipe, text with '<'.
TEST(ErrorCataloguePattern, PlaceholdersBecomeWildcards) {
  const std::regex re(message_pattern("bytes [<b>, <e>) overlap tensor '<other>'"));
  EXPECT_TRUE(std::regex_match("bytes [0, 16) overlap tensor 'a.b'", re));
  EXPECT_FALSE(std::regex_match("bytes (0, 16) overlap tensor 'a.b'", re));
  const std::regex optional(message_pattern("must be a positive[ even] number, got <n>"));
  EXPECT_TRUE(std::regex_match("must be a positive even number, got 3", optional));
  EXPECT_TRUE(std::regex_match("must be a positive number, got 3", optional));
  const std::regex spaced(message_pattern("malformed YAML: <yaml-cpp message>"));
  EXPECT_TRUE(std::regex_match("malformed YAML: illegal tab", spaced));
  const std::regex less(message_pattern("need 1 <= stride <= max_len (got <max_len>, <stride>)"));
  EXPECT_TRUE(std::regex_match("need 1 <= stride <= max_len (got 1, 5)", less));
  EXPECT_FALSE(std::regex_match("need 1 < stride <= max_len (got 1, 5)", less));
  const auto rows = parse_catalogue(t::source_dir() + "/docs/errors.md");
  ASSERT_TRUE(rows.count("CKP-29"));
  EXPECT_EQ(rows.at("CKP-29").exit_code, 5);
  ASSERT_TRUE(rows.count("CHK-30"));
  EXPECT_NE(rows.at("CHK-30").literal.find("<merge|unmerge>"), std::string::npos);
}

}  // namespace
}  // namespace qtrain

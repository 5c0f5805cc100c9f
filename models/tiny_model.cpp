#include "models/tiny_model.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"
#include "core/staging_dir.h"
#include "core/text.h"
#include "data/sentencepiece_to_hf.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/sentencepiece_trainer.h"
#include "formats/safetensors/safetensors.h"
#include "models/hf_names.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <ftw.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <mutex>
#include <random>

namespace qtrain {
namespace {

namespace fs = std::filesystem;

struct Preset {
  const char* name;
  int64_t vocab_size;
  int64_t hidden_size;
  int64_t intermediate_size;
  int64_t num_hidden_layers;
  int64_t num_attention_heads;
  int64_t num_key_value_heads;
};

// The vocabulary must hold 3 special + 256 byte pieces + every character of the corpus (~85 for
// the license texts), hence 384 rather than a rounder 256 for "micro".
constexpr Preset kPresets[] = {
    {"micro", 384, 64, 128, 2, 4, 2},
    {"tiny", 512, 128, 384, 6, 4, 2},
    {"small", 4096, 384, 1024, 8, 6, 2},
    {"100m", 8000, 768, 2560, 12, 12, 4},
};

const char* kDefaultCorpusDir = "/usr/share/common-licenses";

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// Fills a float32 tensor of `shape` with std * z, z a sum of four uniform 32-bit draws scaled to
// unit variance (bell-shaped, |z| < 3.47). Only integer arithmetic and two float roundings (no
// libm, nothing an FMA could fuse), so the values are the same on every CPU.
at::Tensor bell_tensor(at::CPUGeneratorImpl* gen, const std::vector<int64_t>& shape, double std) {
  at::Tensor t = at::empty(shape, at::kFloat);
  float* data = t.data_ptr<float>();
  constexpr int64_t kCenter = 2 * static_cast<int64_t>(std::numeric_limits<uint32_t>::max());
  // Var(sum of four u32) = 4 * (2^64 - 1) / 12, so z = centered * sqrt(3) / 2^32.
  const float factor = static_cast<float>(std * std::sqrt(3.0) / 4294967296.0);
  for (int64_t i = 0, n = t.numel(); i < n; ++i) {
    const uint64_t a = gen->random64();
    const uint64_t b = gen->random64();
    const int64_t sum =
        static_cast<int64_t>((a & 0xFFFFFFFFu) + (a >> 32) + (b & 0xFFFFFFFFu) + (b >> 32));
    data[i] = static_cast<float>(sum - kCenter) * factor;
  }
  return t;
}

// Weights of one tensor, by the role its name gives it (see write_tiny_model in the header).
at::Tensor init_tensor(at::CPUGeneratorImpl* gen, const TensorSpec& spec,
                       const ModelConfig& config) {
  if (spec.name == "model.embed_tokens.weight") {
    return bell_tensor(gen, spec.shape, 2.0 / std::sqrt(double(config.hidden_size)));
  }
  if (ends_with(spec.name, "norm.weight")) {
    // Gemma's norms scale by (1 + w): weights around 0 give the same scales as 1 + w elsewhere.
    at::Tensor w = bell_tensor(gen, spec.shape, 0.1);
    return config.gemma_style() ? w : w.add_(1.0);
  }
  if (ends_with(spec.name, ".bias")) return bell_tensor(gen, spec.shape, 0.05);
  if (spec.shape.size() == 2) {
    return bell_tensor(gen, spec.shape, 1.0 / std::sqrt(double(spec.shape[1])));
  }
  throw_error(ErrorKind::kInternal, "no initializer for tensor", {.tensor = spec.name});
}

NamedTensors random_weights(const ModelConfig& config, uint64_t seed, at::ScalarType dtype) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto* impl = at::check_generator<at::CPUGeneratorImpl>(gen);
  std::lock_guard<std::mutex> lock(gen.mutex());
  NamedTensors tensors;
  for (const TensorSpec& spec : hf_tensor_specs(config)) {
    tensors.emplace_back(spec.name, init_tensor(impl, spec, config).to(dtype));
  }
  return tensors;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) throw_error(ErrorKind::kIo, "cannot write file", {.file = path.string()});
}

std::string generation_config_json(const ModelConfig& config) {
  nlohmann::json j;
  if (config.bos_token_id) j["bos_token_id"] = *config.bos_token_id;
  if (config.eos_token_ids.size() == 1) j["eos_token_id"] = config.eos_token_ids[0];
  if (config.eos_token_ids.size() > 1) j["eos_token_id"] = config.eos_token_ids;
  j["do_sample"] = false;
  return j.dump(2) + "\n";
}

// The tokens every Phi-3 / Phi-3.5 tokenizer adds after its SentencePiece pieces (ids 32000 to
// 32010 there), in id order; llama.cpp's Phi-3 vocabulary setup looks "<|endoftext|>" up by text.
const char* const kPhi3AddedTokens[] = {"<|endoftext|>",    "<|assistant|>",    "<|placeholder1|>",
                                        "<|placeholder2|>", "<|placeholder3|>", "<|placeholder4|>",
                                        "<|system|>",       "<|end|>",          "<|placeholder5|>",
                                        "<|placeholder6|>", "<|user|>"};

// Adds kPhi3AddedTokens from id `first_id` on to tokenizer.json's added_tokens and
// tokenizer_config.json's added_tokens_decoder (texts as hf_tokenizer_json / _config_json wrote
// them), with Phi-3's attributes: all special, all but <|endoftext|> strip whitespace on the right.
void add_phi3_tokens(std::string& tokenizer_json, std::string& tokenizer_config, int64_t first_id) {
  using ordered_json = nlohmann::ordered_json;
  ordered_json j = ordered_json::parse(tokenizer_json);
  ordered_json c = ordered_json::parse(tokenizer_config);
  int64_t id = first_id;
  for (const char* text : kPhi3AddedTokens) {
    const bool rstrip = std::string(text) != "<|endoftext|>";
    ordered_json entry = {{"content", text},  {"lstrip", false},      {"normalized", false},
                          {"rstrip", rstrip}, {"single_word", false}, {"special", true}};
    c["added_tokens_decoder"][std::to_string(id)] = entry;
    j["added_tokens"].push_back({{"id", id},
                                 {"content", text},
                                 {"single_word", false},
                                 {"lstrip", false},
                                 {"rstrip", rstrip},
                                 {"normalized", false},
                                 {"special", true}});
    ++id;
  }
  tokenizer_json = j.dump(2) + "\n";
  tokenizer_config = c.dump(2) + "\n";
}

// Fills `dir` (empty) with the model's files.
void write_model_files(const TinyModelOptions& options, ModelConfig config, const fs::path& dir) {
  std::vector<std::string> corpus = options.corpus;
  if (corpus.empty()) corpus = default_tokenizer_corpus();
  SentencePieceTrainOptions train_options;
  train_options.hard_vocab_limit = false;
  const std::string model_path = (dir / "tokenizer.model").string();
  train_sentencepiece(corpus, static_cast<int>(config.vocab_size), model_path, train_options);
  const SentencePieceTokenizer tokenizer = SentencePieceTokenizer::load(model_path);
  if (tokenizer.vocab_size() != config.vocab_size) {
    log::info("tiny model: the tokenizer has ", tokenizer.vocab_size(), " pieces, not ",
              config.vocab_size, " (the corpus is too small); vocab_size follows the tokenizer");
    config.vocab_size = tokenizer.vocab_size();
  }
  const bool phi3 = config.model_type == "phi3";
  if (phi3) {
    // Like Phi-3's 32000 pieces + 11 added tokens in 32064 embedding rows: a multiple of 64.
    const int64_t used = tokenizer.vocab_size() + static_cast<int64_t>(std::size(kPhi3AddedTokens));
    config.vocab_size = (used + 63) / 64 * 64;
  }
  config.validate("tiny model config");

  HfTokenizerOptions hf_options;
  hf_options.model_max_length = config.max_position_embeddings;
  std::string tokenizer_json = hf_tokenizer_json(tokenizer, hf_options);
  std::string tokenizer_config = hf_tokenizer_config_json(tokenizer, hf_options);
  if (phi3) add_phi3_tokens(tokenizer_json, tokenizer_config, tokenizer.vocab_size());
  write_text(dir / "tokenizer.json", tokenizer_json);
  write_text(dir / "tokenizer_config.json", tokenizer_config);
  write_text(dir / "special_tokens_map.json", hf_special_tokens_map_json(tokenizer));
  write_text(dir / "config.json", config.to_json().dump(2) + "\n");
  write_text(dir / "generation_config.json", generation_config_json(config));

  ShardOptions shards;
  shards.max_shard_bytes =
      options.max_shard_bytes == 0 ? std::numeric_limits<uint64_t>::max() : options.max_shard_bytes;
  const at::ScalarType dtype = scalar_type_from_name(config.torch_dtype);
  write_checkpoint(dir.string(), random_weights(config, options.seed, dtype), shards);
}

// Moves the finished `staging` directory to `target`, replacing what is there.
void move_into_place(const fs::path& staging, const fs::path& target) {
  if (!fs::exists(target) || fs::is_empty(target)) {
    fs::remove(target);
    fs::rename(staging, target);
    return;
  }
  const fs::path old = staging.string() + ".old";
  fs::rename(target, old);
  try {
    fs::rename(staging, target);
  } catch (...) {
    std::error_code ignored;
    fs::rename(old, target, ignored);
    throw;
  }
  remove_tree(old);
}

}  // namespace

const std::vector<std::string>& tiny_model_archs() {
  static const std::vector<std::string> kArchs = {"llama",  "mistral", "qwen2", "qwen3",
                                                  "gemma2", "gemma3",  "phi3"};
  return kArchs;
}

const std::vector<std::string>& tiny_model_presets() {
  static const std::vector<std::string> kNames = [] {
    std::vector<std::string> names;
    for (const Preset& p : kPresets) names.emplace_back(p.name);
    return names;
  }();
  return kNames;
}

ModelConfig tiny_model_config(const std::string& arch, const std::string& preset) {
  const auto& archs = tiny_model_archs();
  if (std::find(archs.begin(), archs.end(), arch) == archs.end()) {
    throw_error(ErrorKind::kConfig,
                "unknown architecture '" + arch + "' (expected one of: " + join(archs) + ")",
                {.field = "arch"});
  }
  const Preset* p = nullptr;
  for (const Preset& candidate : kPresets) {
    if (preset == candidate.name) p = &candidate;
  }
  if (p == nullptr) {
    throw_error(
        ErrorKind::kConfig,
        "unknown preset '" + preset + "' (expected one of: " + join(tiny_model_presets()) + ")",
        {.field = "preset"});
  }
  const bool qwen = arch == "qwen2" || arch == "qwen3";
  const bool gemma = arch == "gemma2" || arch == "gemma3";
  ModelConfig c;
  c.model_type = arch == "gemma3" ? "gemma3_text" : arch;
  c.vocab_size = p->vocab_size;
  c.hidden_size = p->hidden_size;
  c.intermediate_size = p->intermediate_size;
  c.num_hidden_layers = p->num_hidden_layers;
  c.num_attention_heads = p->num_attention_heads;
  c.num_key_value_heads = p->num_key_value_heads;
  c.head_dim = p->hidden_size / p->num_attention_heads;
  // Qwen3 decouples head_dim from hidden/heads (Qwen3-0.6B: 1024 hidden, 16 heads of 128).
  if (arch == "qwen3") c.head_dim *= 2;
  c.rms_norm_eps = qwen || gemma ? 1e-6 : 1e-5;
  c.rope_theta = qwen ? 1e6 : 1e4;
  c.max_position_embeddings = 2048;
  c.tie_word_embeddings = qwen || gemma;
  c.qk_norm = arch == "qwen3" || arch == "gemma3";
  if (arch == "mistral") c.sliding_window = 64;
  if (gemma) {
    // Gemma 2 2B's shape of features: GeGLU, both soft caps, a window on even layers. The
    // attention scale is head_dim^-0.5 as in every Gemma 2 but 27B (and as llama.cpp computes it).
    c.hidden_act = "gelu_pytorch_tanh";
    c.query_pre_attn_scalar = static_cast<double>(c.head_dim);
    c.attn_logit_softcapping = 50.0;
    c.final_logit_softcapping = 30.0;
    c.sliding_window = 16;
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      c.layer_types.push_back(i % 2 == 0 ? "sliding_attention" : "full_attention");
    }
  }
  if (arch == "gemma3") {
    // Gemma 3: q/k norms, no soft caps, sliding layers rotate at 1e4 and full ones at 1e6.
    // Every second layer is full (sliding_window_pattern 2; Gemma 3 itself has 6).
    c.attn_logit_softcapping.reset();
    c.final_logit_softcapping.reset();
    c.rope_theta = 1e6;
    c.local_rope_theta = 1e4;
  }
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

ModelConfig tiny_model_config(const TinyModelOptions& o) {
  ModelConfig c = tiny_model_config(o.arch, o.preset);
  if (o.dtype != "float32" && o.dtype != "bfloat16" && o.dtype != "float16") {
    throw_error(ErrorKind::kConfig,
                "unknown dtype '" + o.dtype + "' (expected float32, bfloat16 or float16)",
                {.field = "dtype"});
  }
  c.torch_dtype = o.dtype;
  if (o.vocab_size) c.vocab_size = *o.vocab_size;
  if (o.hidden_size) c.hidden_size = *o.hidden_size;
  if (o.intermediate_size) c.intermediate_size = *o.intermediate_size;
  if (o.num_hidden_layers) {
    c.num_hidden_layers = *o.num_hidden_layers;
    if (!c.layer_types.empty()) {  // gemma2/3: the alternation continues over the new depth
      c.layer_types.clear();
      for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
        c.layer_types.push_back(i % 2 == 0 ? "sliding_attention" : "full_attention");
      }
    }
  }
  if (o.num_attention_heads) c.num_attention_heads = *o.num_attention_heads;
  if (o.num_key_value_heads) c.num_key_value_heads = *o.num_key_value_heads;
  if (o.head_dim) {
    c.head_dim = *o.head_dim;
  } else if (o.hidden_size || o.num_attention_heads) {
    c.head_dim = c.hidden_size / c.num_attention_heads * (o.arch == "qwen3" ? 2 : 1);
  }
  if (c.query_pre_attn_scalar) c.query_pre_attn_scalar = static_cast<double>(c.head_dim);
  if (o.tie_word_embeddings) c.tie_word_embeddings = *o.tie_word_embeddings;
  if (o.attention_bias) c.attention_bias = *o.attention_bias;
  if (c.attention_bias && c.fused_projections()) {
    throw_error(ErrorKind::kConfig, "phi3 has no attention biases", {.field = "attention_bias"});
  }
  c.validate("tiny model options");
  return c;
}

std::vector<std::string> default_tokenizer_corpus() {
  std::vector<std::string> files;
  std::error_code error;
  for (fs::recursive_directory_iterator it(kDefaultCorpusDir, error), end; !error && it != end;
       it.increment(error)) {
    if (it->is_regular_file() && !it->is_symlink()) files.push_back(it->path().string());
  }
  if (error || files.empty()) {
    throw_error(ErrorKind::kIo, "no tokenizer training text found (pass a corpus instead)",
                {.file = kDefaultCorpusDir});
  }
  // Symlinks (GPL -> GPL-3) are skipped so no text counts twice.
  std::sort(files.begin(), files.end());
  return files;
}

void write_tiny_model(const TinyModelOptions& options, const std::string& dir) {
  const ModelConfig config = tiny_model_config(options);
  fs::path target = fs::absolute(dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  try {
    if (fs::exists(target)) {
      if (!fs::is_directory(target)) {
        throw_error(ErrorKind::kIo, "output exists and is not a directory",
                    {.file = target.string()});
      }
      if (!fs::is_empty(target) && !options.overwrite) {
        throw_error(ErrorKind::kIo,
                    "output directory exists and is not empty (use --overwrite, "
                    "TinyModelOptions::overwrite, to replace it)",
                    {.file = target.string()});
      }
    }
    fs::create_directories(target.parent_path());
    const fs::path staging = make_staging_dir(target);
    try {
      write_model_files(options, config, staging);
      move_into_place(staging, target);
    } catch (...) {
      remove_tree(staging);
      throw;
    }
  } catch (const fs::filesystem_error& e) {
    const std::string file = e.path1().empty() ? target.string() : e.path1().string();
    throw_error(ErrorKind::kIo, "cannot write the model: " + e.code().message(), {.file = file});
  }
}

}  // namespace qtrain

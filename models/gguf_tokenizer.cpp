#include "models/gguf_tokenizer.h"

#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"

#include <nlohmann/json.hpp>

#include <sys/stat.h>
#include <fstream>
#include <optional>

namespace qtrain {
namespace {

// llama.cpp's llama_token_type values.
enum TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

bool is_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::optional<nlohmann::json> read_json(const std::string& path) {
  if (!is_file(path)) return std::nullopt;
  std::ifstream in(path);
  if (!in) throw_error(ErrorKind::kIo, "cannot read", {.file = path});
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw_error(ErrorKind::kFormat, std::string("invalid JSON: ") + e.what(), {.file = path});
  }
}

struct Vocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
};

Vocab sentencepiece_vocab(const SentencePieceTokenizer& spm, int64_t vocab_size) {
  Vocab v;
  for (int64_t id = 0; id < vocab_size; ++id) {
    if (id < spm.vocab_size()) {
      v.tokens.push_back(spm.piece(id));
      v.scores.push_back(spm.score(id));
      v.types.push_back(spm.is_unknown(id)   ? kUnknown
                        : spm.is_control(id) ? kControl
                        : spm.is_byte(id)    ? kByte
                                             : kNormal);
    } else {
      v.tokens.push_back("[PAD" + std::to_string(id) + "]");
      v.scores.push_back(-10000.0f);
      v.types.push_back(kUnused);
    }
  }
  return v;
}

// Tokens that tokenizer_config.json adds on top of the SentencePiece pieces (ids past its end, or
// a different text than the piece with that id).
void apply_added_tokens(Vocab& v, const nlohmann::json& tokenizer_config,
                        const SentencePieceTokenizer& spm, const std::string& source) {
  auto it = tokenizer_config.find("added_tokens_decoder");
  if (it == tokenizer_config.end() || !it->is_object()) return;
  for (const auto& [key, entry] : it->items()) {
    int64_t id;
    try {
      id = std::stoll(key);
    } catch (const std::exception&) {
      throw_error(ErrorKind::kFormat, "added_tokens_decoder key is not an id: " + key,
                  {.file = source, .field = "added_tokens_decoder"});
    }
    if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string()) {
      throw_error(ErrorKind::kFormat, "entry " + key + " has no string \"content\"",
                  {.file = source, .field = "added_tokens_decoder"});
    }
    const std::string content = entry["content"].get<std::string>();
    if (id < 0 || id >= static_cast<int64_t>(v.tokens.size())) continue;  // converter skips too
    if (id < spm.vocab_size() && spm.piece(id) == content) continue;
    const bool special = entry.value("special", false);
    v.tokens[id] = content;
    v.scores[id] = -1000.0f;
    v.types[id] = special ? kControl : kUserDefined;
  }
}

// `from_config` wins when it is a valid id (-1: none); else the model's own id, if it has one.
void add_special_id(GgufWriter& w, const char* key, int64_t from_config, int64_t from_model,
                    int64_t vocab_size) {
  const int64_t id = from_config >= 0 && from_config < vocab_size ? from_config : from_model;
  if (id >= 0 && id < vocab_size) w.add_u32(key, static_cast<uint32_t>(id));
}

}  // namespace

void add_gguf_tokenizer_metadata(GgufWriter& w, const std::string& hf_dir,
                                 const ModelConfig& config) {
  const std::string spm_path = hf_dir + "/tokenizer.model";
  if (!is_file(spm_path)) {
    if (is_file(hf_dir + "/tokenizer.json")) {
      throw_error(ErrorKind::kUnsupported,
                  "GGUF export of tokenizer.json (BPE) vocabularies is not supported yet; export "
                  "without tokenizer metadata to skip it",
                  {.file = hf_dir + "/tokenizer.json"});
    }
    throw_error(ErrorKind::kIo, "no tokenizer.model or tokenizer.json", {.file = hf_dir});
  }
  const SentencePieceTokenizer spm = SentencePieceTokenizer::load(spm_path);
  const int64_t n = config.vocab_size;
  if (spm.vocab_size() > n) {
    throw_error(ErrorKind::kShape,
                "tokenizer has " + std::to_string(spm.vocab_size()) +
                    " pieces but config.json's vocab_size is " + std::to_string(n),
                {.file = spm_path});
  }
  Vocab vocab = sentencepiece_vocab(spm, n);
  const std::string config_path = hf_dir + "/tokenizer_config.json";
  const std::optional<nlohmann::json> tokenizer_config = read_json(config_path);
  if (tokenizer_config) apply_added_tokens(vocab, *tokenizer_config, spm, config_path);

  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string("tokenizer.ggml.pre", "default");
  w.add_array("tokenizer.ggml.tokens", vocab.tokens);
  w.add_array("tokenizer.ggml.scores", vocab.scores);
  w.add_array("tokenizer.ggml.token_type", vocab.types);

  const int64_t config_bos = config.bos_token_id.value_or(-1);
  const int64_t config_eos = config.eos_token_ids.size() == 1 ? config.eos_token_ids[0] : -1;
  const int64_t config_pad = config.pad_token_id.value_or(-1);
  add_special_id(w, "tokenizer.ggml.bos_token_id", config_bos, spm.bos_id(), n);
  add_special_id(w, "tokenizer.ggml.eos_token_id", config_eos, spm.eos_id(), n);
  add_special_id(w, "tokenizer.ggml.unknown_token_id", -1, spm.unk_id(), n);
  add_special_id(w, "tokenizer.ggml.padding_token_id", config_pad, spm.pad_id(), n);

  if (tokenizer_config && tokenizer_config->is_object()) {
    for (const char* which : {"bos", "eos"}) {
      const std::string key = std::string("add_") + which + "_token";
      auto it = tokenizer_config->find(key);
      if (it != tokenizer_config->end() && it->is_boolean()) {
        w.add_bool("tokenizer.ggml." + key, it->get<bool>());
      }
    }
    auto tmpl = tokenizer_config->find("chat_template");
    if (tmpl != tokenizer_config->end() && tmpl->is_string()) {
      w.add_string("tokenizer.chat_template", tmpl->get<std::string>());
    }
  }
}

}  // namespace qtrain

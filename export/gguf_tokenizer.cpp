#include "export/gguf_tokenizer.h"

#include "core/error.h"
#include "core/json_file.h"
#include "core/read_file.h"
#include "data/bpe_tokenizer.h"
#include "data/sentencepiece_tokenizer.h"

#include <nlohmann/json.hpp>

#include <sys/stat.h>
#include <unistd.h>
#include <filesystem>
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
  if (::access(path.c_str(), R_OK) != 0) throw_error(ErrorKind::kIo, "cannot read", {.file = path});
  const bool tokenizer_json = std::filesystem::path(path).filename() == "tokenizer.json";
  const std::string text = tokenizer_json
                               ? read_small_file(path, kMaxTokenizerJsonBytes, "tokenizer.json")
                               : read_small_file(path, kMaxConfigJsonBytes, "tokenizer config");
  try {
    return parse_json_text(text, path);
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
// a different text than the piece with that id), and the model's own user-defined pieces that it
// lists (Gemma's <start_of_turn>): typed normal, llama.cpp would spell them out of smaller pieces.
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
    if (id < spm.vocab_size() && spm.piece(id) == content && v.types[id] != kNormal) continue;
    const bool special = entry.value("special", false);
    v.tokens[id] = content;
    v.scores[id] = -1000.0f;
    v.types[id] = special ? kControl : kUserDefined;
  }
}

// Whether SentencePiece prefixes the text with a space (its add_dummy_prefix: Llama's models do,
// Gemma's do not), seen in how it encodes "a": "\u2581a", or "\u2581" spelled in byte pieces.
bool adds_dummy_prefix(const SentencePieceTokenizer& spm) {
  const std::vector<int64_t> ids = spm.encode("a");
  if (ids.empty()) return false;
  const std::string& first = spm.piece(ids[0]);
  return first.rfind("\xe2\x96\x81", 0) == 0 || (spm.is_byte(ids[0]) && first == "<0xE2>");
}

// `from_config` wins when it is a valid id (-1: none); else the model's own id, if it has one.
void add_special_id(GgufWriter& w, const char* key, int64_t from_config, int64_t from_model,
                    int64_t vocab_size) {
  const int64_t id = from_config >= 0 && from_config < vocab_size ? from_config : from_model;
  if (id >= 0 && id < vocab_size) w.add_u32(key, static_cast<uint32_t>(id));
}

// add_bos_token / add_eos_token and chat_template from tokenizer_config.json.
void add_config_flags(GgufWriter& w, const std::optional<nlohmann::json>& tokenizer_config) {
  if (!tokenizer_config || !tokenizer_config->is_object()) return;
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

// ---- byte-level BPE (tokenizer.json) ----

// llama.cpp's pre-tokenizer names for the Split regexes of the models it knows; convert_hf_to_gguf
// identifies them by hashing a tokenization, qtrain by the pattern itself.
const char* const kLlama3Pattern =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
const char* const kQwen2Pattern =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

// The Split regexes of a pre_tokenizer (alone or in a Sequence), in order.
void split_patterns(const nlohmann::json& pre, std::vector<std::string>& out) {
  if (!pre.is_object()) return;
  const std::string type = pre.value("type", "");
  if (type == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].is_array()) {
    for (const auto& p : pre["pretokenizers"]) split_patterns(p, out);
  } else if (type == "Split" && pre.contains("pattern") && pre["pattern"].is_object()) {
    const auto& pattern = pre["pattern"];
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      out.push_back(pattern["Regex"].get<std::string>());
    }
  }
}

// tokenizer.ggml.pre for the pre-tokenizer of `tokenizer_json`.
std::string bpe_pre_name(const nlohmann::json& tokenizer_json, const std::string& source) {
  std::vector<std::string> patterns;
  const nlohmann::json pre = tokenizer_json.value("pre_tokenizer", nlohmann::json());
  split_patterns(pre, patterns);
  if (patterns.size() == 1 && patterns[0] == kLlama3Pattern) return "llama-bpe";
  if (patterns.size() == 1 && patterns[0] == kQwen2Pattern) return "qwen2";
  if (patterns.empty() && pre.is_object() && pre.value("type", "") == "ByteLevel" &&
      pre.value("use_regex", true)) {
    return "gpt-2";
  }
  throw_error(ErrorKind::kUnsupported,
              "pre-tokenizer matches none llama.cpp knows by name (Llama 3, Qwen2, GPT-2 "
              "regexes)",
              {.file = source, .field = "pre_tokenizer"});
}

// convert_hf_to_gguf's does_token_look_special for the names it lists by shape.
bool looks_special(const std::string& t) {
  auto wrapped = [&t](const std::string& open, const std::string& close) {
    return t.size() >= open.size() + close.size() && t.compare(0, open.size(), open) == 0 &&
           t.compare(t.size() - close.size(), close.size(), close) == 0;
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || wrapped("<|", "|>") ||
         wrapped("<\xef\xbd\x9c", "\xef\xbd\x9c>") || wrapped("<unused", ">");
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size())) {
    s.replace(pos, from.size(), to);
  }
  return s;
}

// tokens / token_type as convert_hf_to_gguf's get_vocab_base: the BPE vocabulary in id order,
// added tokens (control when special or shaped like one, else user-defined with U+2581 turned
// into spaces), "[PAD<id>]" unused tokens for ids no token has.
Vocab bpe_vocab(const nlohmann::json& j, int64_t vocab_size, const std::string& source) {
  Vocab v;
  v.tokens.resize(vocab_size);
  v.types.assign(vocab_size, kUnused);
  std::vector<bool> have(vocab_size, false);
  auto place = [&](int64_t id, const std::string& token, int32_t type, const char* field) {
    if (id < 0 || id >= vocab_size) {
      throw_error(ErrorKind::kShape,
                  "token id " + std::to_string(id) + " is outside config.json's vocab_size " +
                      std::to_string(vocab_size),
                  {.file = source, .field = field});
    }
    v.tokens[id] = token;
    v.types[id] = type;
    have[id] = true;
  };
  const nlohmann::json& vocab = j["model"]["vocab"];
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer()) {
      throw_error(ErrorKind::kFormat, "vocab entry '" + token + "' has no integer id",
                  {.file = source, .field = "model.vocab"});
    }
    place(id.get<int64_t>(), token, kNormal, "model.vocab");
  }
  for (const auto& added : j.value("added_tokens", nlohmann::json::array())) {
    if (!added.is_object() || !added.contains("id") || !added.contains("content")) {
      throw_error(ErrorKind::kFormat, "added token without id / content",
                  {.file = source, .field = "added_tokens"});
    }
    const std::string content = added["content"].get<std::string>();
    const bool special = added.value("special", false) || looks_special(content);
    place(added["id"].get<int64_t>(), special ? content : replace_all(content, "\xe2\x96\x81", " "),
          special ? kControl : kUserDefined, "added_tokens");
  }
  for (int64_t id = 0; id < vocab_size; ++id) {
    if (!have[id]) v.tokens[id] = "[PAD" + std::to_string(id) + "]";
  }
  return v;
}

// tokenizer.ggml.merges: "left right", either form of tokenizer.json's merges (a space inside a
// pair's token becomes U+0120, as gguf-py's SpecialVocab writes it).
std::vector<std::string> bpe_merges(const nlohmann::json& j, const std::string& source) {
  std::vector<std::string> merges;
  const nlohmann::json& list = j["model"].value("merges", nlohmann::json::array());
  for (const auto& m : list) {
    if (m.is_string()) {
      merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.push_back(replace_all(m[0].get<std::string>(), " ", "\xc4\xa0") + " " +
                       replace_all(m[1].get<std::string>(), " ", "\xc4\xa0"));
    } else {
      throw_error(ErrorKind::kFormat, "merge is neither \"a b\" nor [\"a\", \"b\"]",
                  {.file = source, .field = "model.merges"});
    }
  }
  return merges;
}

void add_bpe_metadata(GgufWriter& w, const std::string& hf_dir, const ModelConfig& config) {
  const std::string json_path = hf_dir + "/tokenizer.json";
  const std::string config_path = hf_dir + "/tokenizer_config.json";
  const nlohmann::json j = *read_json(json_path);
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object() ||
      j["model"].value("type", "") != "BPE" || !j["model"].contains("vocab") ||
      !j["model"]["vocab"].is_object()) {
    throw_error(ErrorKind::kUnsupported, "only BPE tokenizer.json models convert to GGUF",
                {.file = json_path, .field = "model.type"});
  }
  const std::string pre = bpe_pre_name(j, json_path);
  // The tokenizer qtrain itself runs: it validates the files and knows BOS / EOS / PAD and
  // whether the post-processor adds BOS.
  const BpeTokenizer tokenizer =
      BpeTokenizer::load(json_path, is_file(config_path) ? config_path : "");
  const Vocab vocab = bpe_vocab(j, config.vocab_size, json_path);

  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", pre);
  w.add_array("tokenizer.ggml.tokens", vocab.tokens);
  w.add_array("tokenizer.ggml.token_type", vocab.types);
  w.add_array("tokenizer.ggml.merges", bpe_merges(j, json_path));

  // gguf-py's SpecialVocab: the tokenizer files' tokens first, config.json's ids otherwise.
  const int64_t n = config.vocab_size;
  const int64_t config_eos = config.eos_token_ids.size() == 1 ? config.eos_token_ids[0] : -1;
  add_special_id(w, "tokenizer.ggml.bos_token_id", tokenizer.bos_id(),
                 config.bos_token_id.value_or(-1), n);
  add_special_id(w, "tokenizer.ggml.eos_token_id", tokenizer.eos_id(), config_eos, n);
  add_special_id(w, "tokenizer.ggml.padding_token_id", tokenizer.pad_id(),
                 config.pad_token_id.value_or(-1), n);

  const std::optional<nlohmann::json> tokenizer_config = read_json(config_path);
  const bool has_flags = tokenizer_config && tokenizer_config->is_object();
  if (!has_flags || !tokenizer_config->contains("add_bos_token")) {
    w.add_bool("tokenizer.ggml.add_bos_token", tokenizer.add_bos_default());
  }
  if (!has_flags || !tokenizer_config->contains("add_eos_token")) {
    w.add_bool("tokenizer.ggml.add_eos_token", tokenizer.add_eos_default());
  }
  add_config_flags(w, tokenizer_config);
}

}  // namespace

void add_gguf_tokenizer_metadata(GgufWriter& w, const std::string& hf_dir,
                                 const ModelConfig& config) {
  const std::string spm_path = hf_dir + "/tokenizer.model";
  if (!is_file(spm_path)) {
    if (is_file(hf_dir + "/tokenizer.json")) return add_bpe_metadata(w, hf_dir, config);
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
  // llama.cpp prefixes a space unless told not to (convert_hf_to_gguf tells it so for Gemma).
  if (!adds_dummy_prefix(spm)) w.add_bool("tokenizer.ggml.add_space_prefix", false);

  const int64_t config_bos = config.bos_token_id.value_or(-1);
  const int64_t config_eos = config.eos_token_ids.size() == 1 ? config.eos_token_ids[0] : -1;
  const int64_t config_pad = config.pad_token_id.value_or(-1);
  add_special_id(w, "tokenizer.ggml.bos_token_id", config_bos, spm.bos_id(), n);
  add_special_id(w, "tokenizer.ggml.eos_token_id", config_eos, spm.eos_id(), n);
  add_special_id(w, "tokenizer.ggml.unknown_token_id", -1, spm.unk_id(), n);
  add_special_id(w, "tokenizer.ggml.padding_token_id", config_pad, spm.pad_id(), n);

  add_config_flags(w, tokenizer_config);
}

}  // namespace qtrain

#include "data/sentencepiece_to_hf.h"

#include <nlohmann/json.hpp>

#include <unordered_map>

namespace qtrain {
namespace {

using ordered_json = nlohmann::ordered_json;

bool is_special(const SentencePieceTokenizer& t, int64_t id) {
  return t.is_control(id) || t.is_unknown(id);
}

bool is_normal(const SentencePieceTokenizer& t, int64_t id) {
  return !is_special(t, id) && !t.is_byte(id);
}

ordered_json added_token(const SentencePieceTokenizer& t, int64_t id) {
  return {{"id", id},        {"content", t.piece(id)}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false},    {"special", true}};
}

// A special token in a post-processor template: {"SpecialToken": {"id": "<s>", "type_id": n}}.
ordered_json special_item(const std::string& token, int type_id) {
  return {{"SpecialToken", {{"id", token}, {"type_id", type_id}}}};
}

ordered_json sequence_item(const char* id, int type_id) {
  return {{"Sequence", {{"id", id}, {"type_id", type_id}}}};
}

ordered_json post_processor(const SentencePieceTokenizer& t, const HfTokenizerOptions& options) {
  const bool bos = options.add_bos_token && t.bos_id() >= 0;
  const bool eos = options.add_eos_token && t.eos_id() >= 0;
  ordered_json single = ordered_json::array();
  ordered_json pair = ordered_json::array();
  ordered_json specials = ordered_json::object();
  auto add_special = [&](int64_t id) {
    const std::string& token = t.piece(id);
    specials[token] = {{"id", token}, {"ids", {id}}, {"tokens", {token}}};
  };
  if (bos) add_special(t.bos_id());
  if (eos) add_special(t.eos_id());
  for (int type_id = 0; type_id < 2; ++type_id) {
    if (bos) pair.push_back(special_item(t.piece(t.bos_id()), type_id));
    pair.push_back(sequence_item(type_id == 0 ? "A" : "B", type_id));
    if (eos) pair.push_back(special_item(t.piece(t.eos_id()), type_id));
  }
  if (bos) single.push_back(special_item(t.piece(t.bos_id()), 0));
  single.push_back(sequence_item("A", 0));
  if (eos) single.push_back(special_item(t.piece(t.eos_id()), 0));
  return {{"type", "TemplateProcessing"},
          {"single", single},
          {"pair", pair},
          {"special_tokens", specials}};
}

// SentencePiece's add_dummy_prefix and whitespace escaping. (A Metaspace pre-tokenizer would
// not do: it skips the prefix when the text already starts with a space; SentencePiece does not.)
ordered_json normalizer() {
  ordered_json steps = ordered_json::array();
  steps.push_back({{"type", "Prepend"}, {"prepend", "\u2581"}});
  steps.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}});
  return {{"type", "Sequence"}, {"normalizers", steps}};
}

ordered_json decoder() {
  ordered_json steps = ordered_json::array();
  steps.push_back({{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}});
  steps.push_back({{"type", "ByteFallback"}});
  steps.push_back({{"type", "Fuse"}});
  // Drops the dummy-prefix space SentencePiece adds in front of the text.
  steps.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  return {{"type", "Sequence"}, {"decoders", steps}};
}

std::string dump(const ordered_json& j) {
  return j.dump(2) + "\n";
}

// The piece of a special id, or null when the model has no such token.
ordered_json token_or_null(const SentencePieceTokenizer& t, int64_t id) {
  return id >= 0 ? ordered_json(t.piece(id)) : ordered_json(nullptr);
}

}  // namespace

std::vector<std::pair<std::string, std::string>> sentencepiece_bpe_merges(
    const SentencePieceTokenizer& t) {
  std::unordered_map<std::string, int64_t> normal;
  for (int64_t id = 0; id < t.vocab_size(); ++id) {
    if (is_normal(t, id)) normal.emplace(t.piece(id), id);
  }
  std::vector<std::pair<std::string, std::string>> merges;
  for (int64_t id = 0; id < t.vocab_size(); ++id) {
    if (!is_normal(t, id)) continue;
    const std::string& piece = t.piece(id);
    // Split only at UTF-8 code point boundaries (bytes that are not continuation bytes).
    for (size_t cut = 1; cut < piece.size(); ++cut) {
      if ((static_cast<unsigned char>(piece[cut]) & 0xC0) == 0x80) continue;
      std::string left = piece.substr(0, cut);
      std::string right = piece.substr(cut);
      if (normal.count(left) && normal.count(right)) {
        merges.emplace_back(std::move(left), std::move(right));
      }
    }
  }
  return merges;
}

std::string hf_tokenizer_json(const SentencePieceTokenizer& t, const HfTokenizerOptions& options) {
  ordered_json added = ordered_json::array();
  ordered_json vocab = ordered_json::object();
  for (int64_t id = 0; id < t.vocab_size(); ++id) {
    if (is_special(t, id)) added.push_back(added_token(t, id));
    vocab[t.piece(id)] = id;
  }
  ordered_json merges = ordered_json::array();
  for (const auto& [left, right] : sentencepiece_bpe_merges(t)) merges.push_back({left, right});

  ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = normalizer();
  j["pre_tokenizer"] = nullptr;
  j["post_processor"] = post_processor(t, options);
  j["decoder"] = decoder();
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", token_or_null(t, t.unk_id())},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", true},
                {"byte_fallback", true},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", merges}};
  return dump(j);
}

std::string hf_tokenizer_config_json(const SentencePieceTokenizer& t,
                                     const HfTokenizerOptions& options) {
  ordered_json decoder_entries = ordered_json::object();
  for (int64_t id = 0; id < t.vocab_size(); ++id) {
    if (!is_special(t, id)) continue;
    ordered_json entry = added_token(t, id);
    entry.erase("id");
    decoder_entries[std::to_string(id)] = entry;
  }
  ordered_json j;
  j["add_bos_token"] = options.add_bos_token;
  j["add_eos_token"] = options.add_eos_token;
  j["added_tokens_decoder"] = decoder_entries;
  j["bos_token"] = token_or_null(t, t.bos_id());
  j["clean_up_tokenization_spaces"] = false;
  j["eos_token"] = token_or_null(t, t.eos_id());
  j["model_max_length"] = options.model_max_length;
  j["pad_token"] = token_or_null(t, t.pad_id());
  // Not LlamaTokenizer: transformers 5 rebuilds that one's pipeline with a Metaspace
  // pre-tokenizer (see normalizer()); the generic class uses tokenizer.json as it is.
  j["tokenizer_class"] = "PreTrainedTokenizerFast";
  j["unk_token"] = token_or_null(t, t.unk_id());
  return dump(j);
}

std::string hf_special_tokens_map_json(const SentencePieceTokenizer& t) {
  ordered_json j = ordered_json::object();
  auto add = [&](const char* key, int64_t id) {
    if (id < 0) return;
    j[key] = {{"content", t.piece(id)},
              {"lstrip", false},
              {"normalized", false},
              {"rstrip", false},
              {"single_word", false}};
  };
  add("bos_token", t.bos_id());
  add("eos_token", t.eos_id());
  add("pad_token", t.pad_id());
  add("unk_token", t.unk_id());
  return dump(j);
}

}  // namespace qtrain

#include "data/bpe_tokenizer.h"

#include "core/error.h"
#include "data/bpe_model.h"
#include "data/byte_level.h"
#include "data/pretokenize_regex.h"
#include "data/unicode_text.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <unordered_map>

namespace qtrain {

using nlohmann::json;

namespace {

// Added tokens cut out of text, as tokenizers' AddedVocabulary::find_matches does with its
// leftmost-longest Aho-Corasick automaton: at the leftmost position where any token starts, the
// longest one; the search goes on after it.
class AddedTokenMatcher {
 public:
  struct Segment {
    size_t begin, end;
    int32_t id;  // -1: text between tokens
  };

  void add(const std::string& pattern, int32_t id, bool lstrip, bool rstrip) {
    const auto first = static_cast<unsigned char>(pattern[0]);
    by_first_byte_[first].push_back(tokens_.size());
    tokens_.push_back({pattern, id, lstrip, rstrip});
    for (auto& bucket : by_first_byte_) {
      std::stable_sort(bucket.begin(), bucket.end(), [&](size_t a, size_t b) {
        return tokens_[a].pattern.size() > tokens_[b].pattern.size();
      });
    }
  }
  bool empty() const { return tokens_.empty(); }

  // The segments covering `text` (empty text segments left out).
  void split(std::string_view text, std::vector<Segment>* out) const {
    out->clear();
    if (tokens_.empty()) {
      if (!text.empty()) out->push_back({0, text.size(), -1});
      return;
    }
    size_t start_offset = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      const Token* found = nullptr;
      for (size_t index : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
        const Token& t = tokens_[index];
        if (text.compare(pos, t.pattern.size(), t.pattern) == 0) {
          found = &t;
          break;
        }
      }
      if (!found) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t stop = pos + found->pattern.size();
      pos = stop;  // the automaton goes on after the match, whatever rstrip takes
      if (found->lstrip) {
        size_t space_start = start;
        while (space_start > 0) {
          size_t before = space_start;
          if (!is_unicode_white_space(previous_code_point(text, &before))) break;
          space_start = before;
        }
        start = std::max(space_start, start_offset);
      }
      if (found->rstrip) {
        while (stop < text.size()) {
          size_t after = stop;
          if (!is_unicode_white_space(next_code_point(text, &after))) break;
          stop = after;
        }
      }
      if (start_offset < start) out->push_back({start_offset, start, -1});
      out->push_back({start, stop, found->id});
      start_offset = stop;
    }
    if (start_offset < text.size()) out->push_back({start_offset, text.size(), -1});
  }

 private:
  struct Token {
    std::string pattern;
    int32_t id;
    bool lstrip, rstrip;
  };
  std::vector<Token> tokens_;
  std::vector<size_t> by_first_byte_[256];
};

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  // A directory opens as a stream and reads as empty: it would pass for malformed JSON.
  if (!in || std::filesystem::is_directory(path, ec)) {
    throw_error(ErrorKind::kIo, std::string("cannot open ") + what, {.file = path});
  }
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) throw_error(ErrorKind::kIo, std::string("cannot read ") + what, {.file = path});
  return bytes.str();
}

// JSON access that names the file and the field path in its errors.
class JsonFile {
 public:
  explicit JsonFile(std::string file) : file_(std::move(file)) {}

  json parse(const std::string& text) const {
    try {
      json root = json::parse(text);
      if (!root.is_object()) fail(ErrorKind::kFormat, "is not a JSON object", "");
      return root;
    } catch (const json::exception& e) {
      fail(ErrorKind::kFormat, std::string("malformed JSON: ") + e.what(), "");
    }
  }

  [[noreturn]] void fail(ErrorKind kind, const std::string& message,
                         const std::string& field) const {
    throw_error(kind, message, {.file = file_, .field = field});
  }

  const json& object(const json& parent, const char* key, const std::string& path) const {
    const auto it = parent.find(key);
    if (it == parent.end() || it->is_null()) fail(ErrorKind::kFormat, "is missing", path);
    if (!it->is_object()) fail(ErrorKind::kFormat, "must be a JSON object", path);
    return *it;
  }
  const json& array(const json& parent, const char* key, const std::string& path) const {
    const auto it = parent.find(key);
    if (it == parent.end() || it->is_null()) fail(ErrorKind::kFormat, "is missing", path);
    if (!it->is_array()) fail(ErrorKind::kFormat, "must be a JSON array", path);
    return *it;
  }
  std::string string(const json& parent, const char* key, const std::string& path) const {
    const auto it = parent.find(key);
    if (it == parent.end() || it->is_null()) fail(ErrorKind::kFormat, "is missing", path);
    if (!it->is_string()) fail(ErrorKind::kFormat, "must be a string", path);
    return it->get<std::string>();
  }
  // A string that may be absent or null ("" then).
  std::string optional_string(const json& parent, const char* key, const std::string& path) const {
    const auto it = parent.find(key);
    if (it == parent.end() || it->is_null()) return "";
    if (!it->is_string()) fail(ErrorKind::kFormat, "must be a string or null", path);
    return it->get<std::string>();
  }
  bool flag(const json& parent, const char* key, const std::string& path, bool fallback) const {
    const auto it = parent.find(key);
    if (it == parent.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) fail(ErrorKind::kFormat, "must be true or false", path);
    return it->get<bool>();
  }
  int64_t integer(const json& value, const std::string& path) const {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() > INT32_MAX) {
      fail(ErrorKind::kFormat, "must be a token id (an integer in [0, 2^31))", path);
    }
    return value.get<int64_t>();
  }
  // The "type" of a component object.
  std::string type(const json& component, const std::string& path) const {
    if (!component.is_object()) fail(ErrorKind::kFormat, "must be a JSON object", path);
    return string(component, "type", path + ".type");
  }

  const std::string& file() const { return file_; }

 private:
  std::string file_;
};

}  // namespace

struct BpeTokenizer::State {
  std::string source;
  std::unordered_map<std::string, int32_t> vocab;  // the BPE model's
  std::unordered_map<std::string, int32_t> added;  // added token content -> id
  std::vector<std::string> spelling;               // id -> token ("" for a hole)
  std::vector<std::string> decoded;                // id -> the bytes it decodes to
  std::vector<uint8_t> kind;                       // id -> kHole / kNormal / kSpecial
  AddedTokenMatcher raw_tokens;                    // normalized=false added tokens
  AddedTokenMatcher normalized_tokens;             // normalized=true added tokens
  bool nfc = false;
  std::vector<SplitRegex> splits;              // the Split steps, in order
  bool prefix_space = false;                   // ByteLevel add_prefix_space
  std::optional<SplitRegex> byte_level_regex;  // ByteLevel use_regex
  std::unique_ptr<ByteLevelBpe> model;
  int64_t vocab_size = 0;
  int64_t bos = -1, eos = -1, pad = -1;

  static constexpr uint8_t kHole = 0, kNormal = 1, kSpecial = 2;

  // Step 3: the pieces of one stretch of text. Prefixed copies live in `storage`.
  void pre_tokenize(std::string_view text, std::vector<std::string_view>* pieces,
                    std::deque<std::string>* storage) const {
    pieces->assign(1, text);
    std::vector<std::string_view> next;
    for (const SplitRegex& split : splits) {
      next.clear();
      for (std::string_view piece : *pieces) split.split_isolated(piece, &next);
      pieces->swap(next);
    }
    if (!prefix_space && !byte_level_regex) return;
    next.clear();
    for (std::string_view piece : *pieces) {
      if (piece.empty()) continue;
      if (prefix_space && piece[0] != ' ') {
        storage->push_back(" " + std::string(piece));
        piece = storage->back();
      }
      if (byte_level_regex) {
        byte_level_regex->split_isolated(piece, &next);
      } else {
        next.push_back(piece);
      }
    }
    pieces->swap(next);
  }

  // Steps 2-4 on a stretch of text between normalized=false added tokens.
  void encode_stretch(std::string_view text, std::vector<int64_t>* ids) const {
    std::string normalized;
    if (nfc) {
      normalized = qtrain::nfc(text);
      text = normalized;
    }
    std::vector<AddedTokenMatcher::Segment> segments;
    normalized_tokens.split(text, &segments);
    std::vector<std::string_view> pieces;
    std::deque<std::string> storage;
    for (const auto& segment : segments) {
      if (segment.id >= 0) {
        ids->push_back(segment.id);
        continue;
      }
      pre_tokenize(text.substr(segment.begin, segment.end - segment.begin), &pieces, &storage);
      for (std::string_view piece : pieces) model->tokenize(piece, ids);
    }
  }
};

namespace {

void parse_normalizer(const JsonFile& f, const json& normalizer, const std::string& path,
                      bool* nfc) {
  if (normalizer.is_null()) return;
  const std::string type = f.type(normalizer, path);
  if (type == "NFC") {
    *nfc = true;
  } else if (type == "Sequence") {
    const json& list = f.array(normalizer, "normalizers", path + ".normalizers");
    for (size_t i = 0; i < list.size(); ++i) {
      parse_normalizer(f, list[i], path + ".normalizers[" + std::to_string(i) + "]", nfc);
    }
  } else {
    f.fail(ErrorKind::kUnsupported, "normalizer \"" + type + "\" is not supported (only NFC)",
           path + ".type");
  }
}

struct PreTokenizerSteps {
  std::vector<SplitRegex> splits;
  int byte_level_count = 0;
  bool byte_level_last = false;
  bool prefix_space = false;
  bool use_regex = false;
};

void parse_pre_tokenizer(const JsonFile& f, const json& p, const std::string& path,
                         PreTokenizerSteps* steps) {
  const std::string type = f.type(p, path);
  if (type == "Sequence") {
    const json& list = f.array(p, "pretokenizers", path + ".pretokenizers");
    for (size_t i = 0; i < list.size(); ++i) {
      parse_pre_tokenizer(f, list[i], path + ".pretokenizers[" + std::to_string(i) + "]", steps);
    }
    return;
  }
  steps->byte_level_last = false;
  if (type == "Split") {
    if (steps->byte_level_count > 0) {
      f.fail(ErrorKind::kUnsupported, "a Split after the ByteLevel pre-tokenizer is not supported",
             path);
    }
    const std::string behavior = f.string(p, "behavior", path + ".behavior");
    if (behavior != "Isolated") {
      f.fail(ErrorKind::kUnsupported,
             "Split behavior \"" + behavior + "\" is not supported (only Isolated)",
             path + ".behavior");
    }
    if (f.flag(p, "invert", path + ".invert", false)) {
      f.fail(ErrorKind::kUnsupported, "an inverted Split is not supported", path + ".invert");
    }
    const json& pattern = f.object(p, "pattern", path + ".pattern");
    bool literal = false;
    std::string text;
    if (pattern.contains("Regex")) {
      text = f.string(pattern, "Regex", path + ".pattern.Regex");
    } else if (pattern.contains("String")) {
      text = f.string(pattern, "String", path + ".pattern.String");
      literal = true;
    } else {
      f.fail(ErrorKind::kFormat, "must hold \"Regex\" or \"String\"", path + ".pattern");
    }
    try {
      steps->splits.emplace_back(text, literal);
    } catch (const Error& e) {
      throw e.with_context({.file = f.file(), .field = path + ".pattern"});
    }
  } else if (type == "ByteLevel") {
    ++steps->byte_level_count;
    steps->byte_level_last = true;
    steps->prefix_space = f.flag(p, "add_prefix_space", path + ".add_prefix_space", true);
    steps->use_regex = f.flag(p, "use_regex", path + ".use_regex", true);
  } else {
    f.fail(ErrorKind::kUnsupported,
           "pre-tokenizer \"" + type + "\" is not supported (Split, ByteLevel, Sequence)",
           path + ".type");
  }
}

// The ids TemplateProcessing's "single" template puts before and after the text.
struct Template {
  std::vector<int64_t> before, after;
};

void parse_post_processor(const JsonFile& f, const json& p, const std::string& path,
                          std::optional<Template>* result) {
  if (p.is_null()) return;
  const std::string type = f.type(p, path);
  if (type == "Sequence") {
    const json& list = f.array(p, "processors", path + ".processors");
    for (size_t i = 0; i < list.size(); ++i) {
      parse_post_processor(f, list[i], path + ".processors[" + std::to_string(i) + "]", result);
    }
  } else if (type == "ByteLevel") {
    // Offsets only.
  } else if (type == "TemplateProcessing") {
    if (result->has_value()) {
      f.fail(ErrorKind::kUnsupported, "more than one TemplateProcessing is not supported", path);
    }
    const json& single = f.array(p, "single", path + ".single");
    const json& specials = f.object(p, "special_tokens", path + ".special_tokens");
    Template t;
    bool seen_text = false;
    for (size_t i = 0; i < single.size(); ++i) {
      const std::string item_path = path + ".single[" + std::to_string(i) + "]";
      const json& item = single[i];
      if (item.is_object() && item.contains("Sequence")) {
        const json& seq = item["Sequence"];
        if (!seq.is_object() || seq.value("id", "") != "A" || seen_text) {
          f.fail(ErrorKind::kUnsupported, "a single template must hold sequence A once", item_path);
        }
        seen_text = true;
      } else if (item.is_object() && item.contains("SpecialToken")) {
        const json& special = item["SpecialToken"];
        if (!special.is_object()) f.fail(ErrorKind::kFormat, "must be a JSON object", item_path);
        const std::string name = f.string(special, "id", item_path + ".SpecialToken.id");
        const auto it = specials.find(name);
        if (it == specials.end() || !it->is_object()) {
          f.fail(ErrorKind::kFormat, "names \"" + name + "\", which special_tokens lacks",
                 item_path);
        }
        const std::string ids_path = path + ".special_tokens." + name + ".ids";
        const json& ids = f.array(*it, "ids", ids_path);
        for (const json& id : ids) {
          (seen_text ? t.after : t.before).push_back(f.integer(id, ids_path));
        }
      } else {
        f.fail(ErrorKind::kFormat, "must be a SpecialToken or a Sequence", item_path);
      }
    }
    if (t.before.size() > 1 || t.after.size() > 1) {
      f.fail(ErrorKind::kUnsupported,
             "a template adding more than one token before or after the text is not supported",
             path + ".single");
    }
    *result = t;
  } else {
    f.fail(ErrorKind::kUnsupported,
           "post-processor \"" + type +
               "\" is not supported (TemplateProcessing, ByteLevel, Sequence)",
           path + ".type");
  }
}

}  // namespace

BpeTokenizer::BpeTokenizer(std::unique_ptr<State> state) : state_(std::move(state)) {}
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;
BpeTokenizer::~BpeTokenizer() = default;

BpeTokenizer BpeTokenizer::load(const std::string& tokenizer_json,
                                const std::string& tokenizer_config) {
  const std::string json_text = read_text_file(tokenizer_json, "tokenizer.json");
  const std::string config_text =
      tokenizer_config.empty() ? "" : read_text_file(tokenizer_config, "tokenizer config");
  return from_json_text(json_text, tokenizer_json, config_text, tokenizer_config);
}

BpeTokenizer BpeTokenizer::from_json_text(const std::string& json_text,
                                          const std::string& json_source,
                                          const std::string& config_text,
                                          const std::string& config_source) {
  const JsonFile f(json_source);
  const json root = f.parse(json_text);
  auto state = std::make_unique<State>();
  state->source = json_source;

  // The model.
  const json& model = f.object(root, "model", "model");
  const std::string model_type = f.string(model, "type", "model.type");
  if (model_type != "BPE") {
    f.fail(ErrorKind::kUnsupported, "model type \"" + model_type + "\" is not supported (only BPE)",
           "model.type");
  }
  if (const auto it = model.find("dropout"); it != model.end() && !it->is_null()) {
    if (!it->is_number()) f.fail(ErrorKind::kFormat, "must be a number or null", "model.dropout");
    if (it->get<double>() != 0.0) {
      f.fail(ErrorKind::kUnsupported, "BPE dropout is not supported", "model.dropout");
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!f.optional_string(model, key, std::string("model.") + key).empty()) {
      f.fail(ErrorKind::kUnsupported, std::string(key) + " is not supported",
             std::string("model.") + key);
    }
  }
  const json& vocab = f.object(model, "vocab", "model.vocab");
  int64_t max_id = -1;
  std::unordered_map<int64_t, std::string> id_owner;
  for (const auto& [token, value] : vocab.items()) {
    const int64_t id = f.integer(value, "model.vocab." + token);
    if (const auto [it, fresh] = id_owner.emplace(id, token); !fresh) {
      f.fail(ErrorKind::kFormat,
             "id " + std::to_string(id) + " belongs to both \"" + it->second + "\" and \"" + token +
                 "\"",
             "model.vocab");
    }
    state->vocab.emplace(token, static_cast<int32_t>(id));
    max_id = std::max(max_id, id);
  }
  // The id tables below are dense, so a few tokens with ids near 2^31 would ask for tens of GB
  // (found by fuzz_tokenizer_json). Real vocabularies are dense or nearly so.
  const auto used = static_cast<int64_t>(state->vocab.size());
  if (const int64_t unused = max_id + 1 - used; unused > std::max<int64_t>(used, 1024)) {
    f.fail(ErrorKind::kFormat,
           "token ids are too sparse: the largest is " + std::to_string(max_id) + " but only " +
               std::to_string(used) + " are used (qtrain accepts at most " +
               std::to_string(std::max<int64_t>(used, 1024)) + " unused ids below the largest)",
           "model.vocab");
  }
  auto vocab_id = [&](const std::string& token, const std::string& path) {
    const auto it = state->vocab.find(token);
    if (it == state->vocab.end()) {
      f.fail(ErrorKind::kFormat, "token \"" + token + "\" is not in model.vocab", path);
    }
    return it->second;
  };
  const json& merges = f.array(model, "merges", "model.merges");
  std::vector<std::array<int32_t, 3>> merge_ids;
  merge_ids.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string path = "model.merges[" + std::to_string(i) + "]";
    const json& merge = merges[i];
    std::string left, right;
    if (merge.is_string()) {
      const std::string line = merge.get<std::string>();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        f.fail(ErrorKind::kFormat, "must be two tokens separated by one space", path);
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      f.fail(ErrorKind::kFormat, "must be \"left right\" or [left, right]", path);
    }
    merge_ids.push_back(
        {vocab_id(left, path), vocab_id(right, path), vocab_id(left + right, path)});
  }
  ByteLevelBpe::Options options;
  options.ignore_merges = f.flag(model, "ignore_merges", "model.ignore_merges", false);
  options.byte_fallback = f.flag(model, "byte_fallback", "model.byte_fallback", false);
  options.fuse_unk = f.flag(model, "fuse_unk", "model.fuse_unk", false);
  if (const std::string unk = f.optional_string(model, "unk_token", "model.unk_token");
      !unk.empty()) {
    options.unk_id = vocab_id(unk, "model.unk_token");
  }

  // The normalizer (before the added tokens: normalized ones match their normalized form).
  if (const auto it = root.find("normalizer"); it != root.end()) {
    parse_normalizer(f, *it, "normalizer", &state->nfc);
  }

  // Added tokens: tokenizers gives each the id of its content in the vocabulary, else the next
  // id after the vocabulary; a file whose ids say otherwise is refused rather than renumbered.
  struct Added {
    std::string content;
    int32_t id;
    bool special;
  };
  std::vector<Added> added;
  if (const auto it = root.find("added_tokens"); it != root.end() && !it->is_null()) {
    if (!it->is_array()) f.fail(ErrorKind::kFormat, "must be a JSON array", "added_tokens");
    int64_t next_id = static_cast<int64_t>(state->vocab.size());
    for (size_t i = 0; i < it->size(); ++i) {
      const std::string path = "added_tokens[" + std::to_string(i) + "]";
      const json& t = (*it)[i];
      if (!t.is_object()) f.fail(ErrorKind::kFormat, "must be a JSON object", path);
      const std::string content = f.string(t, "content", path + ".content");
      if (content.empty()) continue;  // tokenizers ignores them
      if (!t.contains("id")) f.fail(ErrorKind::kFormat, "is missing", path + ".id");
      const int64_t id = f.integer(t["id"], path + ".id");
      const bool special = f.flag(t, "special", path + ".special", false);
      const bool normalized = f.flag(t, "normalized", path + ".normalized", !special);
      const bool lstrip = f.flag(t, "lstrip", path + ".lstrip", false);
      const bool rstrip = f.flag(t, "rstrip", path + ".rstrip", false);
      if (f.flag(t, "single_word", path + ".single_word", false)) {
        f.fail(ErrorKind::kUnsupported, "single_word added tokens are not supported",
               path + ".single_word");
      }
      if (state->added.count(content)) {
        f.fail(ErrorKind::kFormat, "added token \"" + content + "\" is listed twice", path);
      }
      const auto in_vocab = state->vocab.find(content);
      const int64_t expected = in_vocab != state->vocab.end() ? in_vocab->second : next_id++;
      if (id != expected) {
        f.fail(ErrorKind::kFormat,
               "added token \"" + content + "\" has id " + std::to_string(id) +
                   " but tokenizers would give it " + std::to_string(expected),
               path + ".id");
      }
      state->added.emplace(content, static_cast<int32_t>(id));
      added.push_back({content, static_cast<int32_t>(id), special});
      max_id = std::max(max_id, id);
      if (normalized) {
        const std::string pattern = state->nfc ? nfc(content) : content;
        if (!pattern.empty()) {
          state->normalized_tokens.add(pattern, static_cast<int32_t>(id), lstrip, rstrip);
        }
      } else {
        state->raw_tokens.add(content, static_cast<int32_t>(id), lstrip, rstrip);
      }
    }
  }

  // The pre-tokenizer: Split steps, then ByteLevel last.
  const auto pre = root.find("pre_tokenizer");
  if (pre == root.end() || pre->is_null()) {
    f.fail(ErrorKind::kUnsupported,
           "a byte-level BPE needs a ByteLevel pre-tokenizer; this file has none", "pre_tokenizer");
  }
  PreTokenizerSteps steps;
  parse_pre_tokenizer(f, *pre, "pre_tokenizer", &steps);
  if (steps.byte_level_count != 1 || !steps.byte_level_last) {
    f.fail(ErrorKind::kUnsupported,
           "only pre-tokenizers ending in one ByteLevel (byte-level BPE) are supported",
           "pre_tokenizer");
  }
  state->splits = std::move(steps.splits);
  state->prefix_space = steps.prefix_space;
  if (steps.use_regex) state->byte_level_regex.emplace(kGpt2SplitPattern, false);

  // The decoder must undo the byte-level alphabet.
  const auto decoder = root.find("decoder");
  if (decoder == root.end() || decoder->is_null()) {
    f.fail(ErrorKind::kUnsupported, "a byte-level BPE needs a ByteLevel decoder", "decoder");
  }
  if (const std::string type = f.type(*decoder, "decoder"); type != "ByteLevel") {
    f.fail(ErrorKind::kUnsupported, "decoder \"" + type + "\" is not supported (only ByteLevel)",
           "decoder.type");
  }

  std::optional<Template> post;
  if (const auto it = root.find("post_processor"); it != root.end()) {
    parse_post_processor(f, *it, "post_processor", &post);
  }

  // Id tables.
  state->vocab_size = max_id + 1;
  state->spelling.assign(state->vocab_size, "");
  state->decoded.assign(state->vocab_size, "");
  state->kind.assign(state->vocab_size, State::kHole);
  for (const auto& [token, id] : state->vocab) {
    state->spelling[id] = token;
    state->kind[id] = State::kNormal;
  }
  for (const Added& a : added) {
    state->spelling[a.id] = a.content;
    state->kind[a.id] = a.special ? State::kSpecial : State::kNormal;
  }
  for (int64_t id = 0; id < state->vocab_size; ++id) {
    // tokenizers' ByteLevel decoder keeps a token's own UTF-8 when a character of it is outside
    // the alphabet (added tokens such as "<tool_call>" are inside it, so either way agrees).
    if (!from_byte_level(state->spelling[id], &state->decoded[id])) {
      state->decoded[id] = state->spelling[id];
    }
  }
  state->model = std::make_unique<ByteLevelBpe>(state->vocab, merge_ids, options);

  // Special ids: tokenizer_config.json first, then the template.
  if (post) {
    for (int64_t id : post->before) {
      if (id >= state->vocab_size) {
        f.fail(ErrorKind::kFormat, "template token id " + std::to_string(id) + " is unknown",
               "post_processor");
      }
    }
    for (int64_t id : post->after) {
      if (id >= state->vocab_size) {
        f.fail(ErrorKind::kFormat, "template token id " + std::to_string(id) + " is unknown",
               "post_processor");
      }
    }
    if (!post->before.empty()) state->bos = post->before[0];
    if (!post->after.empty()) state->eos = post->after[0];
  }
  if (!config_text.empty()) {
    const JsonFile c(config_source);
    const json config = c.parse(config_text);
    auto special = [&](const char* key, int64_t fallback) -> int64_t {
      const auto it = config.find(key);
      if (it == config.end()) return fallback;
      if (it->is_null()) return -1;
      std::string content;
      if (it->is_string()) {
        content = it->get<std::string>();
      } else if (it->is_object()) {
        content = c.string(*it, "content", std::string(key) + ".content");
      } else {
        c.fail(ErrorKind::kFormat, "must be a token string, {\"content\": ...} or null", key);
      }
      if (const auto a = state->added.find(content); a != state->added.end()) return a->second;
      if (const auto v = state->vocab.find(content); v != state->vocab.end()) return v->second;
      c.fail(ErrorKind::kFormat, "token \"" + content + "\" is not in the tokenizer", key);
    };
    state->bos = special("bos_token", state->bos);
    state->eos = special("eos_token", state->eos);
    state->pad = special("pad_token", -1);
  }

  BpeTokenizer tokenizer(std::move(state));
  tokenizer.set_special_token_defaults(post && !post->before.empty(), post && !post->after.empty());
  return tokenizer;
}

std::vector<int64_t> BpeTokenizer::encode(const std::string& text, bool add_bos,
                                          bool add_eos) const {
  const State& s = *state_;
  if (!is_valid_utf8(text)) {
    // The text's fault, not the tokenizer file's: callers add where the text came from.
    throw_error(ErrorKind::kFormat, "text to encode is not valid UTF-8");
  }
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos && s.bos >= 0) ids.push_back(s.bos);
  std::vector<AddedTokenMatcher::Segment> segments;
  s.raw_tokens.split(text, &segments);
  const std::string_view view(text);
  for (const auto& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
    } else {
      s.encode_stretch(view.substr(segment.begin, segment.end - segment.begin), &ids);
    }
  }
  if (add_eos && s.eos >= 0) ids.push_back(s.eos);
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  const State& s = *state_;
  std::string bytes;
  for (int64_t id : ids) {
    id_to_token(id);  // range check
    if (s.kind[id] == State::kNormal) bytes += s.decoded[id];
  }
  return utf8_lossy(bytes);
}

int64_t BpeTokenizer::vocab_size() const {
  return state_->vocab_size;
}
int64_t BpeTokenizer::bos_id() const {
  return state_->bos;
}
int64_t BpeTokenizer::eos_id() const {
  return state_->eos;
}
int64_t BpeTokenizer::pad_id() const {
  return state_->pad;
}
const std::string& BpeTokenizer::source() const {
  return state_->source;
}

int64_t BpeTokenizer::token_to_id(const std::string& token) const {
  if (const auto it = state_->added.find(token); it != state_->added.end()) return it->second;
  if (const auto it = state_->vocab.find(token); it != state_->vocab.end()) return it->second;
  return -1;
}

const std::string& BpeTokenizer::id_to_token(int64_t id) const {
  if (id < 0 || id >= state_->vocab_size) {
    throw_error(ErrorKind::kFormat,
                "token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                    std::to_string(state_->vocab_size) + ")",
                {.file = state_->source});
  }
  return state_->spelling[id];
}

bool BpeTokenizer::is_special(int64_t id) const {
  return id >= 0 && id < state_->vocab_size && state_->kind[id] == State::kSpecial;
}

std::vector<std::string> BpeTokenizer::pre_tokenize(const std::string& text) const {
  if (!is_valid_utf8(text)) {
    throw_error(ErrorKind::kFormat, "text is not valid UTF-8");
  }
  std::vector<std::string_view> pieces;
  std::deque<std::string> storage;
  std::vector<std::string> out;
  if (text.empty()) return out;
  state_->pre_tokenize(text, &pieces, &storage);
  for (std::string_view piece : pieces) out.push_back(to_byte_level(piece));
  return out;
}

}  // namespace qtrain

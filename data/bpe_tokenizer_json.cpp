#include "data/bpe_tokenizer.h"

#include "core/error.h"
#include "core/json_file.h"
#include "data/bpe_model.h"
#include "data/bpe_tokenizer_internal.h"
#include "data/byte_level.h"
#include "data/pretokenize_regex.h"
#include "data/unicode_text.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace qtrain {

using bpe_tokenizer_internal::BpeTokenizerTables;
using nlohmann::json;

namespace {

// JSON access that names the file and the field path in its errors.
class JsonFile {
 public:
  explicit JsonFile(std::string file) : file_(std::move(file)) {}

  json parse(const std::string& text) const {
    try {
      json root = parse_json_text(text, file_);
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

using Vocab = std::unordered_map<std::string, int32_t>;
using Merge = std::array<int32_t, 3>;  // left id, right id, merged id

// Refuses model types and BPE options that would change the ids.
void check_model_is_plain_bpe(const JsonFile& f, const json& model) {
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
}

// Fills `vocab` from model.vocab and returns its largest id.
int64_t parse_vocab(const JsonFile& f, const json& model, Vocab* vocab) {
  const json& entries = f.object(model, "vocab", "model.vocab");
  int64_t max_id = -1;
  std::unordered_map<int64_t, std::string> id_owner;
  for (const auto& [token, value] : entries.items()) {
    const int64_t id = f.integer(value, "model.vocab." + token);
    if (const auto [it, fresh] = id_owner.emplace(id, token); !fresh) {
      f.fail(ErrorKind::kFormat,
             "id " + std::to_string(id) + " belongs to both \"" + it->second + "\" and \"" + token +
                 "\"",
             "model.vocab");
    }
    vocab->emplace(token, static_cast<int32_t>(id));
    max_id = std::max(max_id, id);
  }
  // The id tables (build_id_tables) are dense, so a few tokens with ids near 2^31 would ask for
  // tens of GB (found by fuzz_tokenizer_json). Real vocabularies are dense or nearly so.
  const auto used = static_cast<int64_t>(vocab->size());
  if (const int64_t unused = max_id + 1 - used; unused > std::max<int64_t>(used, 1024)) {
    f.fail(ErrorKind::kFormat,
           "token ids are too sparse: the largest is " + std::to_string(max_id) + " but only " +
               std::to_string(used) + " are used (qtrain accepts at most " +
               std::to_string(std::max<int64_t>(used, 1024)) + " unused ids below the largest)",
           "model.vocab");
  }
  return max_id;
}

int32_t vocab_id(const JsonFile& f, const Vocab& vocab, const std::string& token,
                 const std::string& path) {
  const auto it = vocab.find(token);
  if (it == vocab.end()) {
    f.fail(ErrorKind::kFormat, "token \"" + token + "\" is not in model.vocab", path);
  }
  return it->second;
}

std::vector<Merge> parse_merges(const JsonFile& f, const json& model, const Vocab& vocab) {
  const json& merges = f.array(model, "merges", "model.merges");
  std::vector<Merge> merge_ids;
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
    merge_ids.push_back({vocab_id(f, vocab, left, path), vocab_id(f, vocab, right, path),
                         vocab_id(f, vocab, left + right, path)});
  }
  return merge_ids;
}

ByteLevelBpe::Options parse_model_options(const JsonFile& f, const json& model,
                                          const Vocab& vocab) {
  ByteLevelBpe::Options options;
  options.ignore_merges = f.flag(model, "ignore_merges", "model.ignore_merges", false);
  options.byte_fallback = f.flag(model, "byte_fallback", "model.byte_fallback", false);
  options.fuse_unk = f.flag(model, "fuse_unk", "model.fuse_unk", false);
  if (const std::string unk = f.optional_string(model, "unk_token", "model.unk_token");
      !unk.empty()) {
    options.unk_id = vocab_id(f, vocab, unk, "model.unk_token");
  }
  return options;
}

// What the "model" section gives besides the vocabulary.
struct ModelSection {
  int64_t max_id = -1;  // the vocabulary's largest id
  std::vector<Merge> merges;
  ByteLevelBpe::Options options;
};

ModelSection parse_model_section(const JsonFile& f, const json& root, Vocab* vocab) {
  const json& model = f.object(root, "model", "model");
  check_model_is_plain_bpe(f, model);
  ModelSection section;
  section.max_id = parse_vocab(f, model, vocab);
  section.merges = parse_merges(f, model, *vocab);
  section.options = parse_model_options(f, model, *vocab);
  return section;
}

struct AddedToken {
  std::string content;
  int32_t id;
  bool special;
};

// Fills tables->added and the two added-token matchers (the normalized ones in their NFC form
// when tables->nfc) and raises *max_id to the added ids. Returns the tokens in file order.
// tokenizers gives each added token the id of its content in the vocabulary, else the next id
// after the vocabulary; a file whose ids say otherwise is refused rather than renumbered.
std::vector<AddedToken> parse_added_tokens_section(const JsonFile& f, const json& root,
                                                   int64_t* max_id, BpeTokenizerTables* tables) {
  std::vector<AddedToken> added;
  const auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return added;
  if (!it->is_array()) f.fail(ErrorKind::kFormat, "must be a JSON array", "added_tokens");
  int64_t next_id = static_cast<int64_t>(tables->vocab.size());
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
    if (tables->added.count(content)) {
      f.fail(ErrorKind::kFormat, "added token \"" + content + "\" is listed twice", path);
    }
    const auto in_vocab = tables->vocab.find(content);
    const int64_t expected = in_vocab != tables->vocab.end() ? in_vocab->second : next_id++;
    if (id != expected) {
      f.fail(ErrorKind::kFormat,
             "added token \"" + content + "\" has id " + std::to_string(id) +
                 " but tokenizers would give it " + std::to_string(expected),
             path + ".id");
    }
    tables->added.emplace(content, static_cast<int32_t>(id));
    added.push_back({content, static_cast<int32_t>(id), special});
    *max_id = std::max(*max_id, id);
    if (normalized) {
      const std::string pattern = tables->nfc ? nfc(content) : content;
      if (!pattern.empty()) {
        tables->normalized_tokens.add(pattern, static_cast<int32_t>(id), lstrip, rstrip);
      }
    } else {
      tables->raw_tokens.add(content, static_cast<int32_t>(id), lstrip, rstrip);
    }
  }
  return added;
}

// The pre-tokenizer: Split steps, then ByteLevel last.
void parse_pre_tokenizer_section(const JsonFile& f, const json& root, BpeTokenizerTables* tables) {
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
  tables->splits = std::move(steps.splits);
  tables->prefix_space = steps.prefix_space;
  if (steps.use_regex) tables->byte_level_regex.emplace(kGpt2SplitPattern, false);
}

// The decoder must undo the byte-level alphabet.
void check_decoder_section(const JsonFile& f, const json& root) {
  const auto decoder = root.find("decoder");
  if (decoder == root.end() || decoder->is_null()) {
    f.fail(ErrorKind::kUnsupported, "a byte-level BPE needs a ByteLevel decoder", "decoder");
  }
  if (const std::string type = f.type(*decoder, "decoder"); type != "ByteLevel") {
    f.fail(ErrorKind::kUnsupported, "decoder \"" + type + "\" is not supported (only ByteLevel)",
           "decoder.type");
  }
}

std::optional<Template> parse_post_processor_section(const JsonFile& f, const json& root) {
  std::optional<Template> post;
  if (const auto it = root.find("post_processor"); it != root.end()) {
    parse_post_processor(f, *it, "post_processor", &post);
  }
  return post;
}

// Sets vocab_size and the id -> spelling / decoded bytes / kind tables.
void build_id_tables(int64_t max_id, const std::vector<AddedToken>& added,
                     BpeTokenizerTables* tables) {
  tables->vocab_size = max_id + 1;
  tables->spelling.assign(tables->vocab_size, "");
  tables->decoded.assign(tables->vocab_size, "");
  tables->kind.assign(tables->vocab_size, BpeTokenizerTables::kHole);
  for (const auto& [token, id] : tables->vocab) {
    tables->spelling[id] = token;
    tables->kind[id] = BpeTokenizerTables::kNormal;
  }
  for (const AddedToken& a : added) {
    tables->spelling[a.id] = a.content;
    tables->kind[a.id] = a.special ? BpeTokenizerTables::kSpecial : BpeTokenizerTables::kNormal;
  }
  for (int64_t id = 0; id < tables->vocab_size; ++id) {
    // tokenizers' ByteLevel decoder keeps a token's own UTF-8 when a character of it is outside
    // the alphabet (added tokens such as "<tool_call>" are inside it, so either way agrees).
    if (!from_byte_level(tables->spelling[id], &tables->decoded[id])) {
      tables->decoded[id] = tables->spelling[id];
    }
  }
}

// BOS / EOS from the tokens the template puts around the text.
void set_template_special_ids(const JsonFile& f, const Template& post, BpeTokenizerTables* tables) {
  for (int64_t id : post.before) {
    if (id >= tables->vocab_size) {
      f.fail(ErrorKind::kFormat, "template token id " + std::to_string(id) + " is unknown",
             "post_processor");
    }
  }
  for (int64_t id : post.after) {
    if (id >= tables->vocab_size) {
      f.fail(ErrorKind::kFormat, "template token id " + std::to_string(id) + " is unknown",
             "post_processor");
    }
  }
  if (!post.before.empty()) tables->bos = post.before[0];
  if (!post.after.empty()) tables->eos = post.after[0];
}

// The id of tokenizer_config.json's `key` (bos_token...): `fallback` when the key is absent, -1
// when it is null.
int64_t config_special_id(const JsonFile& c, const json& config, const char* key, int64_t fallback,
                          const BpeTokenizerTables& tables) {
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
  if (const auto a = tables.added.find(content); a != tables.added.end()) return a->second;
  if (const auto v = tables.vocab.find(content); v != tables.vocab.end()) return v->second;
  c.fail(ErrorKind::kFormat, "token \"" + content + "\" is not in the tokenizer", key);
}

void set_config_special_ids(const std::string& config_text, const std::string& config_source,
                            BpeTokenizerTables* tables) {
  const JsonFile c(config_source);
  const json config = c.parse(config_text);
  tables->bos = config_special_id(c, config, "bos_token", tables->bos, *tables);
  tables->eos = config_special_id(c, config, "eos_token", tables->eos, *tables);
  tables->pad = config_special_id(c, config, "pad_token", -1, *tables);
}

}  // namespace

// Tests and the fuzz_tokenizer_json corpus depend on which error a file with several faults
// reports first: keep the order of these steps and of the checks inside them.
BpeTokenizer BpeTokenizer::from_json_text(const std::string& json_text,
                                          const std::string& json_source,
                                          const std::string& config_text,
                                          const std::string& config_source) {
  const JsonFile f(json_source);
  const json root = f.parse(json_text);
  auto state = std::make_unique<State>();
  state->source = json_source;

  const ModelSection model = parse_model_section(f, root, &state->vocab);
  int64_t max_id = model.max_id;
  // The normalizer (before the added tokens: normalized ones match their normalized form).
  if (const auto it = root.find("normalizer"); it != root.end()) {
    parse_normalizer(f, *it, "normalizer", &state->nfc);
  }
  const std::vector<AddedToken> added = parse_added_tokens_section(f, root, &max_id, state.get());
  parse_pre_tokenizer_section(f, root, state.get());
  check_decoder_section(f, root);
  const std::optional<Template> post = parse_post_processor_section(f, root);

  build_id_tables(max_id, added, state.get());
  state->model = std::make_unique<ByteLevelBpe>(state->vocab, model.merges, model.options);

  // Special ids: tokenizer_config.json first, then the template.
  if (post) set_template_special_ids(f, *post, state.get());
  if (!config_text.empty()) set_config_special_ids(config_text, config_source, state.get());

  BpeTokenizer tokenizer(std::move(state));
  tokenizer.set_special_token_defaults(post && !post->before.empty(), post && !post->after.empty());
  return tokenizer;
}

}  // namespace qtrain

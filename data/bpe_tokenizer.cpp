#include "data/bpe_tokenizer.h"

#include "core/error.h"
#include "core/read_file.h"
#include "data/bpe_tokenizer_internal.h"
#include "data/byte_level.h"
#include "data/unicode_text.h"

#include <algorithm>
#include <deque>

namespace qtrain {

using bpe_tokenizer_internal::AddedTokenMatcher;

namespace {

// Where the edge for `byte` is, or would go, in a node's sorted edges.
template <class Edges>
auto edge_position(Edges& edges, unsigned char byte) {
  return std::lower_bound(edges.begin(), edges.end(), byte,
                          [](const auto& edge, unsigned char b) { return edge.first < b; });
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher() : nodes_(1) {}

int32_t AddedTokenMatcher::child(int32_t node, unsigned char byte) const {
  const auto& edges = nodes_[node].edges;
  const auto it = edge_position(edges, byte);
  return it != edges.end() && it->first == byte ? it->second : -1;
}

void AddedTokenMatcher::add(const std::string& pattern, int32_t id, bool lstrip, bool rstrip) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (const char c : pattern) {
    const auto byte = static_cast<unsigned char>(c);
    int32_t next = child(node, byte);
    if (next < 0) {
      next = static_cast<int32_t>(nodes_.size());
      auto& edges = nodes_[node].edges;
      edges.insert(edge_position(edges, byte), {byte, next});
      nodes_.emplace_back();  // after the insert: `edges` refers into nodes_
    }
    node = next;
  }
  if (nodes_[node].token < 0) nodes_[node].token = static_cast<int32_t>(tokens_.size());
  tokens_.push_back({id, lstrip, rstrip, pattern.size()});
}

const AddedTokenMatcher::Token* AddedTokenMatcher::longest_match_at(std::string_view text,
                                                                    size_t pos) const {
  const Token* found = nullptr;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    node = child(node, static_cast<unsigned char>(text[i]));
    if (node < 0) break;
    if (nodes_[node].token >= 0) found = &tokens_[nodes_[node].token];
  }
  return found;
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>* out) const {
  out->clear();
  if (tokens_.empty()) {
    if (!text.empty()) out->push_back({0, text.size(), -1});
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const Token* found = longest_match_at(text, pos);
    if (!found) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + found->length;
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
    out->push_back({start, stop, found->id, found->lstrip || found->rstrip});
    start_offset = stop;
  }
  if (start_offset < text.size()) out->push_back({start_offset, text.size(), -1});
}

void BpeTokenizer::State::pre_tokenize(std::string_view text, std::vector<std::string_view>* pieces,
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

void BpeTokenizer::State::encode_stretch(std::string_view text, std::vector<int64_t>* ids) const {
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

BpeTokenizer::BpeTokenizer(std::unique_ptr<State> state) : state_(std::move(state)) {}
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;
BpeTokenizer::~BpeTokenizer() = default;

BpeTokenizer BpeTokenizer::load(const std::string& tokenizer_json,
                                const std::string& tokenizer_config) {
  const std::string json_text =
      read_small_file(tokenizer_json, kMaxTokenizerJsonBytes, "tokenizer.json");
  const std::string config_text =
      tokenizer_config.empty()
          ? ""
          : read_small_file(tokenizer_config, kMaxConfigJsonBytes, "tokenizer config");
  return from_json_text(json_text, tokenizer_json, config_text, tokenizer_config);
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

std::vector<Tokenizer::TextSegment> BpeTokenizer::split_at_atomic_tokens(
    std::string_view text) const {
  std::vector<AddedTokenMatcher::Segment> segments;
  state_->raw_tokens.split(text, &segments);
  std::vector<TextSegment> out;
  size_t covered = 0;
  for (const auto& segment : segments) {
    // A token that takes white space along is not atomic; nor is one starting inside what the
    // previous token's rstrip took (a token beginning with white space).
    if (segment.id >= 0 && !segment.strips && segment.begin >= covered) {
      out.push_back({segment.begin, segment.end, segment.id});
    } else if (!out.empty() && out.back().id < 0) {
      out.back().end = std::max<size_t>(out.back().end, segment.end);
    } else {
      out.push_back({std::max(segment.begin, covered), segment.end, -1});
    }
    covered = std::max(covered, segment.end);
  }
  return out;
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

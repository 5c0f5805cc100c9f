// BpeTokenizer's insides, shared by bpe_tokenizer.cpp (encode, decode) and
// bpe_tokenizer_json.cpp (reading tokenizer.json); not part of the API.
#pragma once

#include "data/bpe_model.h"
#include "data/bpe_tokenizer.h"
#include "data/pretokenize_regex.h"

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace qtrain {

namespace bpe_tokenizer_internal {

// Added tokens cut out of text, as tokenizers' AddedVocabulary::find_matches does with its
// leftmost-longest Aho-Corasick automaton: at the leftmost position where any token starts, the
// longest one; the search goes on after it. The tokens live in a byte trie, so finding the
// longest one at a position costs at most the length of the longest token, however many tokens
// share a prefix.
class AddedTokenMatcher {
 public:
  struct Segment {
    size_t begin, end;
    int32_t id;           // -1: text between tokens
    bool strips = false;  // a token with lstrip or rstrip: [begin, end) holds white space too
  };

  AddedTokenMatcher();

  // The first token added with a given pattern wins; an empty pattern is ignored.
  void add(const std::string& pattern, int32_t id, bool lstrip, bool rstrip);
  bool empty() const { return tokens_.empty(); }

  // The segments covering `text` (empty text segments left out).
  void split(std::string_view text, std::vector<Segment>* out) const;

 private:
  struct Token {
    int32_t id;
    bool lstrip, rstrip;
    size_t length;
  };
  // A trie node: its outgoing edges sorted by byte, and the token that ends here (or -1).
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> edges;
    int32_t token = -1;
  };

  int32_t child(int32_t node, unsigned char byte) const;
  // The longest token that starts at `pos`, or nullptr.
  const Token* longest_match_at(std::string_view text, size_t pos) const;

  std::vector<Token> tokens_;
  std::vector<Node> nodes_;  // nodes_[0] is the root
};

// Everything a BpeTokenizer holds. It lives outside the private BpeTokenizer::State so that the
// parsing steps in bpe_tokenizer_json.cpp, which are not members, can fill it.
struct BpeTokenizerTables {
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
};

}  // namespace bpe_tokenizer_internal

struct BpeTokenizer::State : bpe_tokenizer_internal::BpeTokenizerTables {
  // Step 3: the pieces of one stretch of text. Prefixed copies live in `storage`.
  void pre_tokenize(std::string_view text, std::vector<std::string_view>* pieces,
                    std::deque<std::string>* storage) const;

  // Steps 2-4 on a stretch of text between normalized=false added tokens.
  void encode_stretch(std::string_view text, std::vector<int64_t>* ids) const;
};

}  // namespace qtrain

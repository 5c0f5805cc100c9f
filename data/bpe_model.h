// The BPE model of a byte-level tokenizer.json: a vocabulary of byte-level strings, ranked merges,
// and the merge of one pre-token. It works on a pre-token's raw bytes (the byte-level alphabet,
// data/byte_level.h, is applied inside), and gives the ids Hugging Face tokenizers' BPE gives:
//
//   - each byte's character starts as one symbol (its vocabulary id; else its <0xXX> tokens
//     with byte_fallback; else unk_token, runs of them fused with fuse_unk; else dropped);
//   - the adjacent pair with the lowest merge rank merges first, ties going to the leftmost pair
//     (a heap of (rank, position), as tokenizers' Word::merge_all);
//   - with ignore_merges a pre-token that is itself in the vocabulary is one token.
//
// Merged words are cached (a bounded map from pre-token bytes to ids, shared by threads).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace qtrain {

class ByteLevelBpe {
 public:
  struct Options {
    bool ignore_merges = false;
    bool byte_fallback = false;
    bool fuse_unk = false;
    int32_t unk_id = -1;  // -1: no unk token
  };

  // `vocab`: token (byte-level string) -> id. `merges`: (left id, right id, merged id) in rank
  // order; a pair listed twice keeps its last rank, as tokenizers does.
  ByteLevelBpe(const std::unordered_map<std::string, int32_t>& vocab,
               const std::vector<std::array<int32_t, 3>>& merges, Options options);
  ~ByteLevelBpe();

  // Appends the ids of one pre-token (raw bytes, before the byte-level mapping).
  void tokenize(std::string_view pre_token, std::vector<int64_t>* ids) const;

 private:
  struct MergeTable;
  struct Cache;

  void merge_word(std::string_view pre_token, std::vector<int32_t>* ids) const;

  Options options_;
  // Byte -> the ids its character starts as: its own id, or its <0xXX> fallback ids, or none
  // (then unk_token or nothing).
  std::array<std::vector<int32_t>, 256> byte_ids_;
  std::array<bool, 256> byte_in_vocab_{};
  // Raw bytes of each vocabulary token wholly in the byte-level alphabet -> id (ignore_merges).
  std::unordered_map<std::string, int32_t> whole_words_;
  std::unique_ptr<MergeTable> merges_;
  std::unique_ptr<Cache> cache_;
};

}  // namespace qtrain

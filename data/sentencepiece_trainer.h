// Trains a Llama-2-style SentencePiece tokenizer: BPE, byte fallback, digits split, identity
// normalization (text round-trips exactly), a dummy-prefix space, <unk>=0 <s>=1 </s>=2, no pad.
// Training is deterministic: one thread, sentences in file order, no sampling below the cap.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

struct SentencePieceTrainOptions {
  // At most this many lines are used, the first ones in file order.
  int64_t max_sentences = 2'000'000;
  int64_t seed_sentencepiece_size = 1'000'000;
  // false: a corpus too small for `vocab_size` pieces yields a smaller vocabulary instead of an
  // error (read the size back from the model).
  bool hard_vocab_limit = true;
};

// Trains on the lines of `corpus_files` (UTF-8 text, read in the given order) and writes the
// model to `model_prefix_or_path` (taken as a path when it ends in ".model", else as a prefix
// that gets ".model" appended) atomically. Returns the path written. Throws Error(kIo) naming a
// corpus file that cannot be read and Error(kConfig) when SentencePiece rejects the settings
// (e.g. a vocabulary smaller than the 259 byte/special pieces plus the corpus' characters).
std::string train_sentencepiece(const std::vector<std::string>& corpus_files, int vocab_size,
                                const std::string& model_prefix_or_path,
                                const SentencePieceTrainOptions& options = {});

}  // namespace qtrain

// The Hugging Face tokenizer files for a Llama-style SentencePiece BPE model (as trained by
// train_sentencepiece): tokenizer.json, tokenizer_config.json and special_tokens_map.json, written
// next to tokenizer.model so that transformers' AutoTokenizer and the `tokenizers` library give
// the same ids as SentencePiece without converting the model (which needs protobuf).
//
// tokenizer.json is what transformers 4's LlamaConverter wrote for Llama 2 (legacy): a normalizer
// that prepends "▁" and turns spaces into "▁" (SentencePiece's dummy prefix and whitespace
// escaping), no pre-tokenizer, a BPE model with byte fallback whose merges rank by the merged
// piece's id (SentencePiece BPE scores are -id), a post-processor that adds BOS (and EOS when
// asked), and a decoder that undoes it all. tokenizer_config.json names the generic
// PreTrainedTokenizerFast so transformers 5 uses tokenizer.json as it is; with LlamaTokenizer it
// would rebuild the pipeline with a Metaspace pre-tokenizer that differs from SentencePiece on
// text starting with a space. One difference remains by design: transformers matches special
// tokens written in the text ("<s>"), SentencePieceTokenizer::encode treats them as plain text.
#pragma once

#include "data/sentencepiece_tokenizer.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qtrain {

struct HfTokenizerOptions {
  int64_t model_max_length = 2048;
  bool add_bos_token = true;
  bool add_eos_token = false;
};

// The BPE merges equivalent to the model's pieces, highest priority first: for every normal piece
// (by id), each split into two normal pieces (by the left part's length in code points).
std::vector<std::pair<std::string, std::string>> sentencepiece_bpe_merges(
    const SentencePieceTokenizer& tokenizer);

// File contents (pretty-printed JSON, ending in a newline).
std::string hf_tokenizer_json(const SentencePieceTokenizer& tokenizer,
                              const HfTokenizerOptions& options = {});
std::string hf_tokenizer_config_json(const SentencePieceTokenizer& tokenizer,
                                     const HfTokenizerOptions& options = {});
std::string hf_special_tokens_map_json(const SentencePieceTokenizer& tokenizer);

}  // namespace qtrain

// A Hugging Face tokenizer.json with a byte-level BPE model (Llama 3.x, Qwen2/2.5/3, GPT-2
// style) behind qtrain's Tokenizer interface, giving the ids of HF tokenizers'
// Tokenizer.encode(text, add_special_tokens=False) and the text of decode(ids,
// skip_special_tokens=True). The pipeline, as tokenizers runs it:
//
//   1. added_tokens with normalized=false are cut out of the raw text, longest match first at
//      the leftmost position (lstrip / rstrip take the white space beside them along);
//   2. the normalizer (none, or NFC) runs on each stretch between them, and added tokens with
//      normalized=true are cut out of the result;
//   3. the pre-tokenizer splits each stretch: Split (a regex or literal pattern, "Isolated",
//      compiled with PCRE2) steps, then ByteLevel (add_prefix_space; use_regex = GPT-2's
//      pattern), alone or in a Sequence with ByteLevel last;
//   4. the BPE model (data/bpe_model.h) turns each piece into ids.
//
// BOS / EOS come from tokenizer_config.json's bos_token / eos_token, else from the tokens the
// post-processor's TemplateProcessing puts around the text; add_bos_default / add_eos_default
// follow that template (Llama 3 adds <|begin_of_text|>, Qwen adds nothing). pad_id is
// tokenizer_config.json's pad_token, else -1. Anything else in the files that would change the
// ids (another model, normalizer, pre-tokenizer, post-processor or decoder type, single_word
// added tokens, BPE dropout) is Error(kUnsupported) naming the file and the JSON field, never a
// silently different tokenization.
#pragma once

#include "data/tokenizer.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace qtrain {

class BpeTokenizer : public Tokenizer {
 public:
  // Reads tokenizer.json and, when `tokenizer_config` is not empty, that tokenizer_config.json.
  // Throws Error(kIo) naming a file that cannot be read, Error(kFormat) naming the file and the
  // field for malformed JSON, a missing model / vocab / merges, a merge naming a token outside
  // the vocabulary or an unknown special token, Error(kUnsupported) for components it does not
  // implement.
  static BpeTokenizer load(const std::string& tokenizer_json,
                           const std::string& tokenizer_config = "");
  // The same from the files' text; `json_source` / `config_source` name them in errors.
  // `config_text` may be empty (no tokenizer_config.json).
  static BpeTokenizer from_json_text(const std::string& json_text, const std::string& json_source,
                                     const std::string& config_text = "",
                                     const std::string& config_source = "");

  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;
  ~BpeTokenizer() override;

  // Token ids of `text`, optionally framed by BOS / EOS (skipped when the model has none).
  // Added tokens written in the text ("<|eot_id|>") become their ids, as in tokenizers.
  // Throws Error(kFormat) when `text` is not valid UTF-8. Thread-safe.
  std::vector<int64_t> encode(const std::string& text, bool add_bos = false,
                              bool add_eos = false) const override;
  // Text of `ids`: special added tokens decode to nothing, the rest through the byte-level
  // alphabet; bytes that do not form UTF-8 become U+FFFD. Throws Error(kFormat) for an id
  // outside [0, vocab_size()).
  std::string decode(const std::vector<int64_t>& ids) const override;
  // The added tokens with normalized, lstrip and rstrip false (special or not).
  std::vector<TextSegment> split_at_atomic_tokens(std::string_view text) const override;

  // Largest id of the vocabulary and the added tokens, plus one.
  int64_t vocab_size() const override;
  int64_t bos_id() const override;
  int64_t eos_id() const override;
  int64_t pad_id() const override;

  // The id of a token (added tokens first, then the BPE vocabulary, byte-level spelling), or -1.
  int64_t token_to_id(const std::string& token) const;
  // The token of an id as the files spell it; "" for an id no token has. Throws Error(kFormat)
  // for an id outside [0, vocab_size()).
  const std::string& id_to_token(int64_t id) const;
  // Whether `id` is an added token marked special.
  bool is_special(int64_t id) const;

  // Step 3 alone, as tokenizers' pre_tokenizer.pre_tokenize_str gives it: the pieces of `text`
  // in the byte-level alphabet. For tests and debugging.
  std::vector<std::string> pre_tokenize(const std::string& text) const;

  // Where the tokenizer came from (the tokenizer.json path or `json_source`), for messages.
  const std::string& source() const;

 private:
  struct State;
  explicit BpeTokenizer(std::unique_ptr<State> state);

  std::unique_ptr<State> state_;
};

}  // namespace qtrain

// The tokenizer interface the data pipeline uses, and the loader that picks the implementation a
// model directory needs: SentencePiece (tokenizer.model: Llama 2, Mistral, TinyLlama, qtrain's
// tiny models) or Hugging Face tokenizer.json byte-level BPE (Llama 3.x, Qwen2/2.5/3;
// data/bpe_tokenizer.h).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qtrain {

class Tokenizer {
 public:
  virtual ~Tokenizer();

  // Token ids of `text` (UTF-8), optionally framed by BOS / EOS (skipped when the model has none).
  virtual std::vector<int64_t> encode(const std::string& text, bool add_bos,
                                      bool add_eos) const = 0;
  // Text of `ids`; special tokens decode to nothing.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;

  // A stretch of text (id -1), or an added token that splits text atomically (its id).
  struct TextSegment {
    size_t begin, end;  // byte offsets
    int64_t id;
  };
  // `text` cut at the added tokens that split any text atomically, found as encode finds them
  // (tokenizer.json: leftmost-longest): encode(text) is the concatenation of encode(segment) for
  // the text segments and [id] for the tokens, and a prefix of `text` cut where a token ends
  // encodes as the segments before it followed by the rest. tokenizer.json added tokens with
  // normalized, lstrip and rstrip false qualify (tokenizers cuts them out before normalizing and
  // pre-tokenizing); SentencePiece has none: the whole text is one segment.
  virtual std::vector<TextSegment> split_at_atomic_tokens(std::string_view text) const {
    if (text.empty()) return {};
    return {{0, text.size(), -1}};
  }

  virtual int64_t vocab_size() const = 0;
  // Special ids; -1 when the model has none (pad, in Llama-style models).
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual int64_t pad_id() const = 0;

  // Whether the model's inputs start with BOS / end with EOS: tokenizer_config.json's
  // add_bos_token / add_eos_token when load_tokenizer found them, else the tokenizer's own
  // default (SentencePiece: Llama's true / false; tokenizer.json: what its post-processor adds).
  bool add_bos_default() const { return add_bos_default_; }
  bool add_eos_default() const { return add_eos_default_; }
  void set_special_token_defaults(bool add_bos, bool add_eos) {
    add_bos_default_ = add_bos;
    add_eos_default_ = add_eos;
  }

 private:
  bool add_bos_default_ = true;
  bool add_eos_default_ = false;
};

// The id batches pad with: the tokenizer's pad id, or 0 when it has none. Any valid id works,
// since padding carries no loss and no real token attends to it.
int64_t padding_id(const Tokenizer& tokenizer);

// A model's tokenizer_config.json as JSON: Error(kIo) when it cannot be read, Error(kFormat)
// ("malformed JSON: ...") naming it when it is not JSON.
nlohmann::json read_tokenizer_config(const std::string& path);

// The tokenizer of an HF model directory: tokenizer.model (SentencePiece) when present, else
// tokenizer.json (byte-level BPE, with tokenizer_config.json's bos/eos/pad tokens); `model_dir`
// may also be the path of a tokenizer.model itself. tokenizer_config.json, when present, sets
// add_bos_default / add_eos_default. Throws Error(kIo) naming the directory when it has neither
// file, Error(kFormat) naming tokenizer_config.json when it is malformed or its add_*_token is not
// a boolean, and BpeTokenizer::load's errors (kUnsupported for a tokenizer.json that is not a
// byte-level BPE).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

}  // namespace qtrain

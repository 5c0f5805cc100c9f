// A SentencePiece model (the tokenizer.model of Llama 2, Mistral, TinyLlama and qtrain's tiny
// models) behind a small interface: int64 ids ready for tensors, qtrain::Error naming the file on
// bad input. Text in and out is UTF-8. It is the Tokenizer (data/tokenizer.h) of tokenizer.model
// directories.
#pragma once

#include "data/tokenizer.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace qtrain {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // Reads a tokenizer.model. Throws Error(kIo) naming the file when it cannot be read and
  // Error(kFormat) when it is not a SentencePiece model.
  static SentencePieceTokenizer load(const std::string& path);
  // The same from the file's bytes; `source` names them in errors.
  static SentencePieceTokenizer from_serialized(const std::string& bytes,
                                                const std::string& source);

  SentencePieceTokenizer(SentencePieceTokenizer&&) noexcept;
  SentencePieceTokenizer& operator=(SentencePieceTokenizer&&) noexcept;
  ~SentencePieceTokenizer() override;

  // Token ids of `text`, optionally framed by BOS / EOS. Text that looks like a special token
  // ("<s>") is encoded as plain characters, never as the special id.
  std::vector<int64_t> encode(const std::string& text, bool add_bos = false,
                              bool add_eos = false) const override;
  // Text of `ids`; control tokens (BOS, EOS) decode to nothing, byte tokens are reassembled into
  // UTF-8. Throws Error(kFormat) for an id outside [0, vocab_size()).
  std::string decode(const std::vector<int64_t>& ids) const override;

  int64_t vocab_size() const override;
  // Special ids; -1 when the model has none (pad, in Llama-style models).
  int64_t bos_id() const override;
  int64_t eos_id() const override;
  int64_t unk_id() const;
  int64_t pad_id() const override;

  // Per-piece data (GGUF tokenizer metadata, tokenizer.json). Throw Error(kFormat) when the id
  // is out of range.
  const std::string& piece(int64_t id) const;
  float score(int64_t id) const;
  bool is_control(int64_t id) const;
  bool is_unknown(int64_t id) const;
  bool is_byte(int64_t id) const;
  // The id of a piece, or unk_id() when the vocabulary has no such piece.
  int64_t piece_to_id(const std::string& piece) const;

  // Where the model came from (path or `source`), for messages.
  const std::string& source() const { return source_; }

 private:
  SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor,
                         std::string source);
  int check_id(int64_t id) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::string source_;
};

}  // namespace qtrain

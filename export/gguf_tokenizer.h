// GGUF tokenizer.* metadata from a Hugging Face checkpoint directory (reference/formats.md §7.2).
#pragma once

#include "formats/gguf/gguf_writer.h"
#include "models/config.h"

#include <string>

namespace qtrain {

// Adds the tokenizer metadata of the checkpoint in `hf_dir`: its SentencePiece tokenizer.model or,
// when it has none, its byte-level BPE tokenizer.json.
//
// SentencePiece: the metadata for tokenizer.model, padded or checked
// against config.vocab_size, as convert_hf_to_gguf does:
//   tokenizer.ggml.model "llama", tokenizer.ggml.pre "default",
//   tokenizer.ggml.tokens [str], tokenizer.ggml.scores [f32], tokenizer.ggml.token_type [i32]
//   (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused padding, 6 byte),
//   tokenizer.ggml.{bos,eos,unknown,padding}_token_id u32 (config.json ids win over the model's),
//   tokenizer.ggml.add_bos_token / add_eos_token bool and tokenizer.chat_template str when
//   tokenizer_config.json has them.
// Ids in [sentencepiece size, vocab_size) are "[PAD<id>]" unused tokens with score -10000 unless
// tokenizer_config.json's added_tokens_decoder names them (then control if "special", else
// user-defined, score -1000).
//
// BPE (as convert_hf_to_gguf's _set_vocab_gpt2): tokenizer.ggml.model "gpt2", tokenizer.ggml.pre
// from the pre-tokenizer's Split regex ("llama-bpe" for Llama 3's, "qwen2" for Qwen2's, "gpt-2"
// for a lone ByteLevel with its regex), tokens in id order (byte-level spelling) padded with
// "[PAD<id>]" (type 5), token_type 1 for the BPE vocabulary, 3 for added tokens that are special
// or shaped like <|...|>, 4 for the other added tokens, merges "left right", bos / eos / padding
// ids (the tokenizer files' first, then config.json's), add_bos_token / add_eos_token (the
// tokenizer_config.json flags, else what the post-processor adds) and chat_template. Unlike the
// converter, a non-normalized added token is not re-spelled through encode + decode.
//
// Throws Error(kIo) when the directory has no tokenizer, Error(kShape) when the tokenizer has
// more tokens than config.vocab_size, Error(kUnsupported) naming tokenizer.json for a non-BPE model
// or a pre-tokenizer llama.cpp has no name for, and what BpeTokenizer::load throws.
void add_gguf_tokenizer_metadata(GgufWriter& writer, const std::string& hf_dir,
                                 const ModelConfig& config);

}  // namespace qtrain

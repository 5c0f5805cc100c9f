// GGUF tokenizer.* metadata from a Hugging Face checkpoint directory (reference/formats.md §7.2).
#pragma once

#include "models/config.h"
#include "models/gguf_writer.h"

#include <string>

namespace qtrain {

// Adds the tokenizer metadata for the SentencePiece tokenizer.model in `hf_dir`, padded or checked
// against config.vocab_size, as convert_hf_to_gguf does:
//   tokenizer.ggml.model "llama", tokenizer.ggml.pre "default",
//   tokenizer.ggml.tokens [str], tokenizer.ggml.scores [f32], tokenizer.ggml.token_type [i32]
//   (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused padding, 6 byte),
//   tokenizer.ggml.{bos,eos,unknown,padding}_token_id u32 (config.json ids win over the model's),
//   tokenizer.ggml.add_bos_token / add_eos_token bool and tokenizer.chat_template str when
//   tokenizer_config.json has them.
// Ids in [sentencepiece size, vocab_size) are "[PAD<id>]" unused tokens with score -10000 unless
// tokenizer_config.json's added_tokens_decoder names them (then control if "special", else
// user-defined, score -1000). Throws Error(kUnsupported) when the directory has only a
// tokenizer.json (BPE), Error(kIo) when it has no tokenizer, Error(kShape) when the tokenizer has
// more pieces than config.vocab_size.
void add_gguf_tokenizer_metadata(GgufWriter& writer, const std::string& hf_dir,
                                 const ModelConfig& config);

}  // namespace qtrain

// The files of an HF model directory besides config.json and the weights: tokenizer, generation
// settings and chat template. Every derived model directory (merged, re-quantized) carries them.
#pragma once

#include <filesystem>

namespace qtrain {

// Copies those of generation_config.json, tokenizer.json, tokenizer.model,
// tokenizer_config.json, special_tokens_map.json, added_tokens.json, vocab.json, merges.txt,
// chat_template.jinja and chat_template.json that `src` has into `dst` (which exists).
// Throws Error(kIo) naming the file on a failed copy.
void copy_model_side_files(const std::filesystem::path& src, const std::filesystem::path& dst);

}  // namespace qtrain

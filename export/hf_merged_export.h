// Writes MergedWeights as a Hugging Face model directory that transformers' from_pretrained loads
// as it is: sharded safetensors (+ index), config.json with the output dtype and without any
// quantization_config, and the base's tokenizer / generation / chat-template files.
#pragma once

#include "export/merged_weights.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace qtrain {

// Floating tensors are cast to `dtype` (round to nearest even); integer tensors keep theirs.
// `dir` must exist and be empty (callers stage it). Streams: one merged tensor at a time.
void write_merged_hf(const MergedWeights& weights, const std::string& dir, at::ScalarType dtype,
                     uint64_t max_shard_bytes);

}  // namespace qtrain

// Tiny random Llama-family models for tests and demos (nothing can be downloaded here): complete
// Hugging Face model directories (config.json, safetensors, tokenizer files) that transformers
// loads as they are, deterministic from a seed, in presets from a few hundred KB to ~100M
// parameters.
#pragma once

#include "models/config.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

// The architectures and presets tiny_model_config accepts.
// llama, mistral, qwen2, qwen3, gemma2, gemma3 (model_type gemma3_text), phi3
const std::vector<std::string>& tiny_model_archs();
const std::vector<std::string>& tiny_model_presets();  // micro, tiny, small, 100m

// The config of a preset: GQA everywhere; qwen3 with head_dim = 2 * hidden/heads; qwen2/qwen3 tie
// their embeddings, llama/mistral do not; mistral has a 64-token sliding window so that longer
// test sequences exercise it; gemma2 ties its embeddings, soft-caps attention (50) and logits (30)
// and slides a 16-token window on even layers; phi3 fuses qkv and gate_up. vocab_size is the
// tokenizer's target size (phi3's model has more rows: see write_tiny_model). Throws Error(kConfig)
// naming the unknown arch or preset.
// gemma3 (model_type gemma3_text) has gemma2's layout without soft caps, with q/k norms and RoPE
// base 1e4 on its sliding layers, 1e6 on its full ones.
ModelConfig tiny_model_config(const std::string& arch, const std::string& preset);

struct TinyModelOptions {
  std::string arch = "llama";
  std::string preset = "tiny";
  uint64_t seed = 0;
  uint64_t max_shard_bytes = 0;   // 0: one model.safetensors; else shards + index
  std::string dtype = "float32";  // float32 | bfloat16 | float16
  bool overwrite = false;         // replace an existing non-empty directory

  // Overrides of the preset. vocab_size is only the tokenizer's target: the config gets the size
  // the tokenizer actually has.
  std::optional<int64_t> vocab_size;
  std::optional<int64_t> hidden_size;
  std::optional<int64_t> intermediate_size;
  std::optional<int64_t> num_hidden_layers;
  std::optional<int64_t> num_attention_heads;
  std::optional<int64_t> num_key_value_heads;
  std::optional<int64_t> head_dim;
  std::optional<bool> tie_word_embeddings;
  std::optional<bool> attention_bias;

  // Tokenizer training text; empty: every regular file under /usr/share/common-licenses (which
  // Debian always ships), sorted by path.
  std::vector<std::string> corpus;
};

// The config write_tiny_model would write, before the tokenizer fixes vocab_size. Throws
// Error(kConfig) for a bad arch, preset, dtype or override.
ModelConfig tiny_model_config(const TinyModelOptions& options);

// The default tokenizer corpus (see TinyModelOptions::corpus).
std::vector<std::string> default_tokenizer_corpus();

// Writes a complete model directory: config.json, model.safetensors (or shards and
// model.safetensors.index.json), generation_config.json, and a Llama-2-style SentencePiece BPE
// tokenizer trained on the corpus: tokenizer.model plus the tokenizer.json,
// tokenizer_config.json and special_tokens_map.json with which transformers gives the same ids
// (data/sentencepiece_to_hf.h). phi3's tokenizer files also add Phi-3's special tokens after the
// pieces, as every Phi-3 tokenizer does (<|endoftext|>, <|assistant|>, <|placeholder1-4|>,
// <|system|>, <|end|>, <|placeholder5-6|>, <|user|>; tokenizer.model does not know them), and
// its vocab_size is pieces + 11 rounded up to a multiple of 64 (Phi-3: 32000 + 11 -> 32064). The
// same options give byte-identical files; the tokenizer does not depend on the seed.
// Everything is built in a temporary sibling directory and renamed into place at the end, so a
// failure leaves nothing behind. Throws Error(kIo) when `dir` exists, is not empty and
// options.overwrite is false.
//
// Weights (float32, then cast to dtype): linear weights ~ std 1/sqrt(in_features), biases std
// 0.05, norm weights 1 + std 0.1, embeddings std 2/sqrt(hidden) (so tied logits are O(1)). Values
// come from a bell-shaped sum of four uniforms drawn from at::CPUGeneratorImpl(seed), tensor by
// tensor in hf_tensor_specs order, with integer arithmetic, so they are the same on every CPU.
void write_tiny_model(const TinyModelOptions& options, const std::string& dir);

}  // namespace qtrain

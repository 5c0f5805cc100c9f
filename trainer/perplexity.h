// Perplexity of a model over a long token stream with a sliding window, the way Hugging Face's
// perplexity guide computes it: windows of `max_len` tokens start every `stride` tokens, and each
// window scores only the tokens the previous window did not, so every token after the first is
// scored exactly once, with at least max_len - stride tokens of context before it (when
// stride == max_len the windows are disjoint and each window's first token goes unscored).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

class CausalLM;
class Tokenizer;

struct PerplexityOptions {
  int64_t max_len = 512;   // tokens per window
  int64_t stride = 256;    // 1 <= stride <= max_len
  int64_t max_tokens = 0;  // > 0: score only the first max_tokens tokens of the stream
  // lm_head and the loss run over this many scored tokens at a time (trainer/chunked_loss.h),
  // 0: a window's at once; the window's full-vocabulary logits never exist.
  int64_t loss_chunk_tokens = 1024;
};

struct PerplexityResult {
  double mean_loss = 0;   // mean next-token negative log-likelihood (nats)
  double perplexity = 0;  // exp(mean_loss)
  int64_t scored_tokens = 0;
  int64_t windows = 0;
  double seconds = 0;  // forward passes only
  double tokens_per_second = 0;
};

// ids: the stream (at least 2 tokens). Runs `model` in eval mode without gradients on `device`.
// Throws Error(kUsage) for a bad window/stride and Error(kConfig) when the stream is too short.
PerplexityResult sliding_window_perplexity(CausalLM& model, const std::vector<int64_t>& ids,
                                           const PerplexityOptions& options, c10::Device device);

// The token stream of an evaluation file: a .txt file is one document; a .jsonl file has one
// document per line, in its "text" field (`field` renames it). Each document is encoded with the
// tokenizer's BOS default and followed by EOS. Errors name the file and line: Error(kIo) for a
// missing file, Error(kFormat) for a bad line, Error(kConfig) for a file with no text.
std::vector<int64_t> evaluation_token_stream(const std::string& path, const Tokenizer& tokenizer,
                                             const std::string& field = "text");

}  // namespace qtrain

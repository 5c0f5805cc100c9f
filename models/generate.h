// Text generation with a KV cache: greedy, or temperature + top-p (nucleus) sampling.
#pragma once

#include "models/llama.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace qtrain {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;        // keep the smallest set of tokens whose probability reaches top_p
  uint64_t seed = 0;
  std::vector<int64_t> stop_ids;  // stop after emitting one of these (EOS)
  // Only ids below this are ever produced (0: every logit). Models pad the embedding matrix past
  // the tokenizer (Qwen2.5-7B: 152,064 rows, 151,665 tokens); the padding rows are no token.
  int64_t vocab_limit = 0;
};

// logits [V] (any float dtype) -> the next token id, below options.vocab_limit when that is set.
int64_t sample_next_token(const at::Tensor& logits, const GenerateOptions& options,
                          at::Generator& generator);

// prompt: token ids (non-empty). Calls on_token for every new token as soon as it exists; returns
// the new tokens (without the prompt).
std::vector<int64_t> generate(CausalLM& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options,
                              const std::function<void(int64_t)>& on_token = {});

}  // namespace qtrain

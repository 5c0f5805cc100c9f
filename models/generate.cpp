#include "models/generate.h"

#include "core/error.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>

namespace qtrain {

int64_t sample_next_token(const at::Tensor& logits, const GenerateOptions& options,
                          at::Generator& generator) {
  at::Tensor scores = logits.to(at::kFloat).to(at::kCPU).view({-1});
  if (options.vocab_limit > 0 && options.vocab_limit < scores.size(0)) {
    scores = scores.narrow(0, 0, options.vocab_limit);
  }
  if (options.temperature <= 0.0) return scores.argmax().item<int64_t>();
  at::Tensor probs = at::softmax(scores / options.temperature, 0);
  if (options.top_p < 1.0) {
    auto [sorted, order] = probs.sort(/*dim=*/0, /*descending=*/true);
    at::Tensor before = sorted.cumsum(0) - sorted;  // mass of strictly more likely tokens
    sorted.masked_fill_(before >= options.top_p, 0.0);
    probs = at::zeros_like(probs).scatter_(0, order, sorted);
  }
  return at::multinomial(probs, 1, /*replacement=*/false, generator).item<int64_t>();
}

std::vector<int64_t> generate(CausalLM& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options,
                              const std::function<void(int64_t)>& on_token) {
  if (prompt.empty()) throw_error(ErrorKind::kUsage, "generation needs a non-empty prompt");
  if (options.top_p <= 0.0 || options.top_p > 1.0) {
    throw_error(ErrorKind::kUsage, "top_p must be in (0, 1]", {.field = "top_p"});
  }
  const int64_t limit = model.config().max_position_embeddings;
  if (static_cast<int64_t>(prompt.size()) + options.max_new_tokens > limit) {
    throw_error(ErrorKind::kUsage, "prompt plus max_new_tokens exceeds max_position_embeddings (" +
                                       std::to_string(limit) + ")");
  }
  torch::NoGradGuard no_grad;
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  KvCache cache;
  std::vector<int64_t> produced;
  at::Tensor input = at::tensor(prompt, at::kLong).view({1, -1});
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    at::Tensor logits =
        model.forward({.input_ids = input, .cache = &cache, .last_token_only = true});
    const int64_t next = sample_next_token(logits[0][0], options, generator);
    produced.push_back(next);
    if (on_token) on_token(next);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) != options.stop_ids.end())
      break;
    input = at::tensor({next}, at::kLong).view({1, 1});
  }
  return produced;
}

}  // namespace qtrain

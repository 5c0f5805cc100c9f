#include "trainer/perplexity.h"

#include "core/error.h"
#include "core/json_file.h"
#include "core/read_file.h"
#include "data/examples.h"
#include "data/tokenizer.h"
#include "models/llama.h"
#include "trainer/chunked_loss.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <fstream>

namespace qtrain {

PerplexityResult sliding_window_perplexity(CausalLM& model, const std::vector<int64_t>& ids,
                                           const PerplexityOptions& options, c10::Device device) {
  if (options.max_len < 2 || options.stride < 1 || options.stride > options.max_len) {
    throw_error(ErrorKind::kUsage, "need max_len >= 2 and 1 <= stride <= max_len (got " +
                                       std::to_string(options.max_len) + ", " +
                                       std::to_string(options.stride) + ")");
  }
  int64_t n = static_cast<int64_t>(ids.size());
  if (options.max_tokens > 0) n = std::min<int64_t>(n, options.max_tokens + 1);
  if (n < 2) throw_error(ErrorKind::kConfig, "the evaluation text has fewer than 2 tokens");

  at::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const at::Tensor all = at::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + n), at::kLong);
  PerplexityResult result;
  double nll = 0;
  const auto started = std::chrono::steady_clock::now();
  int64_t scored_until = 1;  // token 0 has no context: never scored
  for (int64_t begin = 0; scored_until < n; begin += options.stride) {
    const int64_t end = std::min(begin + options.max_len, n);
    at::Tensor window = all.slice(0, begin, end).unsqueeze(0);  // [1, T]
    // Labels for the tokens not scored yet; the loss shifts them onto the logits before. The
    // window's first token has no context in it (only when stride == max_len): left unscored.
    const int64_t first = std::max(scored_until, begin + 1);
    at::Tensor labels = window.clone();
    labels.slice(1, 0, first - begin).fill_(kIgnoreLabel);
    const at::Tensor hidden = model.hidden_states({.input_ids = window.to(device)});
    nll += chunked_causal_lm_loss_sum(hidden, *model.lm_head, labels, options.loss_chunk_tokens,
                                      model.config().final_logit_softcapping.value_or(0.0))
               .item<double>();
    result.scored_tokens += end - first;
    scored_until = end;
    ++result.windows;
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (was_training) model.train();
  result.mean_loss = nll / static_cast<double>(result.scored_tokens);
  result.perplexity = std::exp(result.mean_loss);
  result.tokens_per_second =
      result.seconds > 0 ? static_cast<double>(result.scored_tokens) / result.seconds : 0;
  return result;
}

std::vector<int64_t> evaluation_token_stream(const std::string& path, const Tokenizer& tokenizer,
                                             const std::string& field) {
  refuse_special_file(path, "evaluation data");  // /dev/zero would be read until memory runs out
  std::ifstream in(path);
  if (!in) throw_error(ErrorKind::kIo, "cannot read the evaluation data", {.file = path});
  std::vector<std::string> documents;
  const bool jsonl = path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
  if (!jsonl) {
    documents.push_back(read_small_file(path, kMaxDatasetFileBytes, "evaluation data"));
  } else {
    std::string line;
    for (int64_t number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json record;
      try {
        record = parse_json_text(line, path);
      } catch (const nlohmann::json::exception& e) {
        throw_error(ErrorKind::kFormat, std::string("invalid JSON: ") + e.what(),
                    {.file = path, .line = number});
      } catch (const Error& e) {  // nested too deep, or a key given twice: name the file's line
        throw_error(e.kind(), e.message(),
                    {.file = path, .field = e.context().field, .line = number});
      }
      if (!record.is_object() || !record.contains(field) || !record[field].is_string()) {
        throw_error(ErrorKind::kFormat, "expected an object with a string \"" + field + "\"",
                    {.file = path, .field = field, .line = number});
      }
      documents.push_back(record[field].get<std::string>());
    }
  }
  std::vector<int64_t> ids;
  for (const std::string& doc : documents) {
    if (doc.empty()) continue;
    std::vector<int64_t> part;
    try {
      part = tokenizer.encode(doc, tokenizer.add_bos_default(), true);
    } catch (const Error& e) {
      throw e.with_context({.file = path});  // e.g. text that is not UTF-8
    }
    ids.insert(ids.end(), part.begin(), part.end());
  }
  if (ids.size() < 2) throw_error(ErrorKind::kConfig, "no text to evaluate", {.file = path});
  return ids;
}

}  // namespace qtrain

#include "trainer/data_check.h"

#include "data/batcher.h"
#include "data/tokenizer.h"
#include "trainer/recipe/recipe.h"
#include "trainer/training_data.h"
#include "trainer/training_model.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <sstream>

namespace qtrain {
namespace {

constexpr int64_t kHistogramBins = 16;
constexpr int64_t kHistogramWidth = 40;

std::string percent(int64_t part, int64_t whole) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f%%", whole > 0 ? 100.0 * part / whole : 0.0);
  return text;
}

// Real tokens / token slots over one epoch of micro-batches.
struct BatchFill {
  int64_t batches = 0, rows = 0, slots = 0, tokens = 0;
};

BatchFill measure_batches(const std::vector<Example>& examples, const BatchOptions& options) {
  Batcher batcher(examples, options);
  BatchFill fill;
  fill.batches = batcher.batches_per_epoch();
  for (int64_t b = 0; b < fill.batches; ++b) {
    const Batch batch = batcher.next();
    fill.rows += batch.input_ids.size(0);
    fill.slots += batch.input_ids.numel();
    fill.tokens += batch.tokens;
  }
  return fill;
}

void write_histogram(std::ostringstream& out, const std::vector<int64_t>& lengths,
                     int64_t max_seq_len) {
  std::vector<int64_t> bins(kHistogramBins, 0);
  for (int64_t length : lengths) ++bins[(length - 1) * kHistogramBins / max_seq_len];
  const int64_t tallest = *std::max_element(bins.begin(), bins.end());
  for (int64_t b = 0; b < kHistogramBins; ++b) {
    const int64_t lo = b * max_seq_len / kHistogramBins + 1;
    const int64_t hi = (b + 1) * max_seq_len / kHistogramBins;
    const int64_t bar = tallest > 0 ? (bins[b] * kHistogramWidth + tallest - 1) / tallest : 0;
    char label[48];
    std::snprintf(label, sizeof(label), "  %6lld-%-6lld |", static_cast<long long>(lo),
                  static_cast<long long>(hi));
    out << label << std::string(bar, '#') << std::string(kHistogramWidth - bar, ' ') << " "
        << bins[b] << "\n";
  }
}

}  // namespace

LengthSummary summarize_lengths(std::vector<int64_t> lengths) {
  std::sort(lengths.begin(), lengths.end());
  const auto n = static_cast<int64_t>(lengths.size());
  auto at_quantile = [&](double q) { return lengths[static_cast<int64_t>(q * (n - 1))]; };
  return {.min = lengths.front(),
          .median = at_quantile(0.5),
          .p95 = at_quantile(0.95),
          .max = lengths.back(),
          .mean = std::accumulate(lengths.begin(), lengths.end(), 0.0) / n};
}

std::string render_loss_mask(const Example& example, const Tokenizer& tokenizer) {
  // BOS and EOS decode to nothing; they are shown, since whether EOS carries loss matters.
  auto special = [&](int64_t id) -> std::string {
    if (id == tokenizer.bos_id()) return "<bos>";
    if (id == tokenizer.eos_id()) return "<eos>";
    return "";
  };
  std::string out;
  size_t i = 0;
  while (i < example.ids.size()) {
    const bool loss = example.labels[i] != kIgnoreLabel;
    std::string text;
    std::vector<int64_t> run;
    for (; i < example.ids.size() && (example.labels[i] != kIgnoreLabel) == loss; ++i) {
      const std::string name = special(example.ids[i]);
      if (name.empty()) {
        run.push_back(example.ids[i]);
        continue;
      }
      text += tokenizer.decode(run) + name;
      run.clear();
    }
    text += tokenizer.decode(run);
    out += loss ? "[[" + text + "]]" : text;
  }
  return out;
}

std::string data_check_report(const Recipe& recipe) {
  const auto& d = recipe.data;
  const auto& t = recipe.training;
  const std::string model_dir = resolve_model_dir(recipe.model.path);
  const TrainingData data = load_training_data(recipe, model_dir);
  const Tokenizer& tokenizer = *data.tokenizer;
  const ExampleStats& stats = data.train_stats;

  std::ostringstream out;
  out << "data check: " << d.path << " (format " << d.format;
  if (d.format == "chat") out << ", template " << d.template_name;
  out << ", max_seq_len " << d.max_seq_len << ", overlong " << d.overlong << ")\n";
  out << "tokenizer: " << model_dir << " (vocab " << tokenizer.vocab_size() << ", bos "
      << tokenizer.bos_id() << ", eos " << tokenizer.eos_id() << ", add_bos "
      << (tokenizer.add_bos_default() ? "true" : "false") << ")\n";
  out << "examples: " << stats.samples << " kept, " << stats.truncated << " truncated, "
      << stats.dropped << " dropped, " << stats.skipped_lines << " bad records skipped\n";
  out << "split: " << data.train.size() << " train, " << data.eval.size() << " held out"
      << (d.eval_path.empty() ? "" : " (from " + d.eval_path + ")") << "\n";

  std::vector<int64_t> lengths;
  int64_t tokens = 0, loss_tokens = 0;
  for (const auto* part : {&data.train, &data.eval}) {
    for (const Example& example : *part) {
      lengths.push_back(static_cast<int64_t>(example.ids.size()));
      tokens += lengths.back();
      loss_tokens += std::count_if(example.labels.begin(), example.labels.end(),
                                   [](int64_t label) { return label != kIgnoreLabel; });
    }
  }
  out << "tokens: " << tokens << ", " << loss_tokens << " carry loss ("
      << percent(loss_tokens, tokens) << ")"
      << (d.train_on_inputs ? " (train_on_inputs)" : "; prompts are masked") << "\n";
  const LengthSummary summary = summarize_lengths(lengths);
  char line[160];
  std::snprintf(
      line, sizeof(line), "length: min %lld, median %lld, p95 %lld, max %lld, mean %.1f tokens\n",
      static_cast<long long>(summary.min), static_cast<long long>(summary.median),
      static_cast<long long>(summary.p95), static_cast<long long>(summary.max), summary.mean);
  out << line;
  write_histogram(out, lengths, d.max_seq_len);

  BatchOptions options{.micro_batch_size = t.micro_batch_size,
                       .seq_len = d.max_seq_len,
                       .packing = false,
                       .seed = t.seed,
                       .shuffle = true,
                       .pad_id = padding_id(tokenizer)};
  const BatchFill padded = measure_batches(data.train, options);
  options.packing = true;
  const BatchFill packed = measure_batches(data.train, options);
  for (const auto& [name, fill] : {std::pair{"padded", padded}, std::pair{"packed", packed}}) {
    out << "batches (" << name << (d.packing == (std::string(name) == "packed") ? ", used" : "")
        << "): " << fill.batches << " micro-batches of up to " << t.micro_batch_size
        << " rows per epoch, " << fill.rows << " rows, " << percent(fill.tokens, fill.slots)
        << " of token slots are real tokens\n";
  }
  const int64_t micro_batches = d.packing ? packed.batches : padded.batches;
  out << "optimizer steps per epoch: "
      << (micro_batches + t.grad_accum_steps - 1) / t.grad_accum_steps << " (grad_accum_steps "
      << t.grad_accum_steps << ")";
  if (t.max_steps > 0) out << "; training.max_steps " << t.max_steps;
  out << "\n";
  if (!data.train.empty()) {
    out << "first training example (" << data.train.front().ids.size()
        << " tokens; loss on [[...]]):\n"
        << render_loss_mask(data.train.front(), tokenizer) << "\n";
  }
  if (!data.train_rejected.empty()) {
    out << "its rejected partner (" << data.train_rejected.front().ids.size()
        << " tokens; preference pairs: the counts above are the chosen sides):\n"
        << render_loss_mask(data.train_rejected.front(), tokenizer) << "\n";
  }
  return out.str();
}

}  // namespace qtrain

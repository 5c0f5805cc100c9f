#include "data/examples.h"

#include "core/error.h"
#include "core/log.h"

#include <algorithm>
#include <sstream>

namespace qtrain {

namespace {

constexpr int64_t kHistogramBins = 8;

void check_options(const ExampleOptions& options) {
  if (options.max_seq_len < 2) {
    throw_error(ErrorKind::kConfig,
                "max_seq_len must be at least 2, got " + std::to_string(options.max_seq_len));
  }
  if (options.overlong != "truncate" && options.overlong != "drop") {
    throw_error(ErrorKind::kConfig,
                "overlong must be 'truncate' or 'drop', got '" + options.overlong + "'");
  }
}

void append(Example& example, const std::vector<int64_t>& ids, bool with_loss) {
  example.ids.insert(example.ids.end(), ids.begin(), ids.end());
  for (int64_t id : ids) example.labels.push_back(with_loss ? id : kIgnoreLabel);
}

Example tokenize_turns(const std::vector<PromptParts>& turns, const Tokenizer& tokenizer,
                       const ExampleOptions& options) {
  Example example;
  if (options.add_bos && tokenizer.bos_id() >= 0) append(example, {tokenizer.bos_id()}, false);
  for (const auto& turn : turns) {
    append(example, tokenizer.encode(turn.prompt, false, false), options.train_on_inputs);
    append(example, tokenizer.encode(turn.response, false, false), true);
  }
  if (options.add_eos && tokenizer.eos_id() >= 0) append(example, {tokenizer.eos_id()}, true);
  if (!example.labels.empty()) example.labels[0] = kIgnoreLabel;
  return example;
}

int64_t count_loss_tokens(const Example& example) {
  return std::count_if(example.labels.begin(), example.labels.end(),
                       [](int64_t label) { return label != kIgnoreLabel; });
}

}  // namespace

std::string ExampleStats::summary() const {
  std::ostringstream out;
  out << samples << " samples (" << truncated << " truncated, " << dropped << " dropped, "
      << skipped_lines << " bad lines skipped), " << total_tokens << " tokens, " << loss_tokens
      << " with loss";
  return out.str();
}

std::vector<Example> build_examples(const std::vector<Record>& records, const std::string& format,
                                    const FieldMap& fields, const Tokenizer& tokenizer,
                                    const ExampleOptions& options, ExampleStats* stats) {
  check_options(options);
  check_prompt_format(format, fields, options.chat_template);
  ExampleStats counts;
  counts.length_histogram.assign(kHistogramBins, 0);
  std::vector<Example> examples;
  examples.reserve(records.size());
  for (const Record& record : records) {
    std::vector<PromptParts> turns;
    try {
      turns = format_record(record, format, fields, options.chat_template);
    } catch (const Error& e) {
      if (!options.skip_bad_lines || e.kind() != ErrorKind::kFormat) throw;
      if (++counts.skipped_lines <= 5) log::warn("skipping bad dataset record: ", e.what());
      continue;
    }
    Example example = tokenize_turns(turns, tokenizer, options);
    const bool overlong = static_cast<int64_t>(example.ids.size()) > options.max_seq_len;
    if (overlong && options.overlong == "drop") {
      ++counts.dropped;
      continue;
    }
    if (overlong) {
      example.ids.resize(options.max_seq_len);
      example.labels.resize(options.max_seq_len);
    }
    const int64_t loss_tokens = count_loss_tokens(example);
    if (loss_tokens == 0) {
      ++counts.dropped;
      continue;
    }
    if (overlong) ++counts.truncated;
    const auto kept_length = static_cast<int64_t>(example.ids.size());
    ++counts.samples;
    counts.total_tokens += kept_length;
    counts.loss_tokens += loss_tokens;
    ++counts.length_histogram[(kept_length - 1) * kHistogramBins / options.max_seq_len];
    examples.push_back(std::move(example));
  }
  if (examples.empty()) {
    std::string source = records.empty() ? std::string("the dataset") : records.front().file;
    throw_error(ErrorKind::kConfig,
                "no usable sample in " + source + ": " + std::to_string(counts.dropped) +
                    " dropped (longer than max_seq_len " + std::to_string(options.max_seq_len) +
                    " or without a token to learn), " + std::to_string(counts.skipped_lines) +
                    " skipped as bad; is max_seq_len too small?");
  }
  if (stats) *stats = counts;
  return examples;
}

std::vector<Example> load_examples(const std::string& path, const std::string& format,
                                   const FieldMap& fields, const Tokenizer& tokenizer,
                                   const ExampleOptions& options, ExampleStats* stats) {
  check_options(options);
  check_prompt_format(format, fields, options.chat_template);
  int64_t bad_lines = 0;
  const std::vector<Record> records = read_records(path, options.skip_bad_lines, &bad_lines);
  ExampleStats counts;
  std::vector<Example> examples =
      build_examples(records, format, fields, tokenizer, options, &counts);
  counts.skipped_lines += bad_lines;
  if (stats) *stats = counts;
  return examples;
}

}  // namespace qtrain

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

// A stretch of the sample: text, or a special id placed by the template.
struct Piece {
  std::string text;
  int64_t special = -1;
  bool loss = false;
};

// How many leading ids of `tail` agree with ids[offset...].
size_t common_prefix(const std::vector<int64_t>& ids, size_t offset,
                     const std::vector<int64_t>& tail) {
  size_t n = 0;
  while (offset + n < ids.size() && n < tail.size() && ids[offset + n] == tail[n]) ++n;
  return n;
}

std::vector<int64_t> encode_part(const Tokenizer& tokenizer, const std::string& text, size_t begin,
                                 size_t end) {
  return tokenizer.encode(text.substr(begin, end - begin), false, false);
}

// A run's text encoded as a whole, and where each token that splits text atomically ends.
struct EncodedRun {
  struct Cut {
    size_t text_offset;
    size_t ids_before;
  };
  std::vector<int64_t> ids;
  std::vector<Cut> cuts = {{0, 0}};
};

EncodedRun encode_run(const std::string& text, const Tokenizer& tokenizer) {
  EncodedRun run;
  for (const auto& segment : tokenizer.split_at_atomic_tokens(text)) {
    if (segment.id >= 0) {
      run.ids.push_back(segment.id);
      run.cuts.push_back({segment.end, run.ids.size()});
    } else {
      const auto ids = encode_part(tokenizer, text, segment.begin, segment.end);
      run.ids.insert(run.ids.end(), ids.begin(), ids.end());
    }
  }
  return run;
}

// How many leading ids of the whole run the text up to `boundary` shares with it. That text
// encodes as the run's ids up to the last atomic token before the boundary followed by the
// encoding of the text from there, so only that stretch is encoded again. `*cut` (the last
// such token seen) only moves forward: boundaries come in order.
size_t agreeing_prefix(const EncodedRun& run, const std::string& text, size_t boundary,
                       const Tokenizer& tokenizer, size_t* cut) {
  while (*cut + 1 < run.cuts.size() && run.cuts[*cut + 1].text_offset <= boundary) ++*cut;
  const EncodedRun::Cut& from = run.cuts[*cut];
  const std::vector<int64_t> tail = encode_part(tokenizer, text, from.text_offset, boundary);
  return from.ids_before + common_prefix(run.ids, from.ids_before, tail);
}

// Tokenizes consecutive text pieces as one text, the way the model will see it served (a
// tokenizer can merge across a piece boundary, and SentencePiece marks only the start of a text
// with its dummy-prefix space). Each token takes the loss flag of the piece it starts in: the
// boundary is where the tokens of the text up to it stop agreeing with the whole. A chatml or
// llama3 conversation is one run (its template tokens are text), so the work per boundary must
// not grow with the run: see agreeing_prefix.
void append_text_run(Example& example, const std::vector<Piece>& run, const Tokenizer& tokenizer) {
  std::string whole;
  for (const Piece& piece : run) whole += piece.text;
  const EncodedRun encoded = encode_run(whole, tokenizer);
  size_t boundary = 0;
  size_t start = 0;
  size_t cut = 0;
  for (size_t p = 0; p < run.size(); ++p) {
    boundary += run[p].text.size();
    const size_t end =
        p + 1 == run.size()
            ? encoded.ids.size()
            : std::max(start, agreeing_prefix(encoded, whole, boundary, tokenizer, &cut));
    append(example, std::vector<int64_t>(encoded.ids.begin() + start, encoded.ids.begin() + end),
           run[p].loss);
    start = end;
  }
}

Example tokenize_turns(const std::vector<PromptParts>& turns, const Tokenizer& tokenizer,
                       const ExampleOptions& options) {
  std::vector<Piece> pieces;
  auto special = [&](int64_t id, bool loss) {
    if (id >= 0) pieces.push_back({"", id, loss});
  };
  auto text = [&](const std::string& value, bool loss) {
    if (!value.empty()) pieces.push_back({value, -1, loss});
  };
  // A template that renders the BOS itself (data.template auto) places it; never twice.
  const bool template_opens_with_bos = !turns.empty() && turns.front().bos_before_prompt;
  if (options.add_bos && !template_opens_with_bos) special(tokenizer.bos_id(), false);
  for (const auto& turn : turns) {
    if (turn.bos_before_prompt) special(tokenizer.bos_id(), options.train_on_inputs);
    text(turn.prompt, options.train_on_inputs);
    text(turn.response, true);
    if (turn.eos_after_response) special(tokenizer.eos_id(), true);
  }
  const bool ends_with_eos = !turns.empty() && turns.back().eos_after_response;
  if (options.add_eos && !ends_with_eos) special(tokenizer.eos_id(), true);

  Example example;
  std::vector<Piece> run;
  for (const Piece& piece : pieces) {
    if (piece.special < 0) {
      run.push_back(piece);
      continue;
    }
    if (!run.empty()) append_text_run(example, run, tokenizer);
    run.clear();
    append(example, {piece.special}, piece.loss);
  }
  if (!run.empty()) append_text_run(example, run, tokenizer);
  if (!example.labels.empty()) example.labels[0] = kIgnoreLabel;
  return example;
}

int64_t count_loss_tokens(const Example& example) {
  return std::count_if(example.labels.begin(), example.labels.end(),
                       [](int64_t label) { return label != kIgnoreLabel; });
}

// `turns` of `record`, tokenized; errors carry the record's file and line.
Example tokenize_record_turns(const Record& record, const std::vector<PromptParts>& turns,
                              const Tokenizer& tokenizer, const ExampleOptions& options) {
  Example example;
  try {
    example = tokenize_turns(turns, tokenizer, options);
  } catch (const Error& e) {
    throw e.with_context({.file = record.file, .line = record.line});
  }
  example.origin = record.file + ":" + std::to_string(record.line);
  return example;
}

}  // namespace

Example tokenize_record(const Record& record, const std::string& format, const FieldMap& fields,
                        const Tokenizer& tokenizer, const ExampleOptions& options) {
  return tokenize_record_turns(record, format_record(record, format, fields, options.chat_template),
                               tokenizer, options);
}

int64_t count_example_loss_tokens(const Example& example) {
  return count_loss_tokens(example);
}

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
  std::vector<std::string> masked;  // origins of samples left without a label to learn from
  for (const Record& record : records) {
    std::vector<PromptParts> turns;
    try {
      turns = format_record(record, format, fields, options.chat_template);
    } catch (const Error& e) {
      if (!options.skip_bad_lines || e.kind() != ErrorKind::kFormat) throw;
      if (++counts.skipped_lines <= 5) log::warn("skipping bad dataset record: ", e.what());
      continue;
    }
    Example example = tokenize_record_turns(record, turns, tokenizer, options);
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
      masked.push_back(example.origin);
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
  if (!masked.empty() && !log::quiet_rank()) {  // every rank loads the same data: say it once
    std::string named;
    for (size_t i = 0; i < masked.size() && i < 8; ++i) named += (i ? ", " : "") + masked[i];
    if (masked.size() > 8) named += " and " + std::to_string(masked.size() - 8) + " more";
    log::warn(masked.size(), " sample(s) dropped with every label masked (no token to learn from",
              options.train_on_inputs ? "" : " once the prompt is masked", " within max_seq_len ",
              options.max_seq_len, "): ", named,
              "; raise data.max_seq_len or shorten their prompts");
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
  const std::vector<Record> records =
      read_records(path, options.skip_bad_lines, &bad_lines, options.max_record_bytes);
  ExampleStats counts;
  std::vector<Example> examples =
      build_examples(records, format, fields, tokenizer, options, &counts);
  counts.skipped_lines += bad_lines;
  if (stats) *stats = counts;
  return examples;
}

}  // namespace qtrain

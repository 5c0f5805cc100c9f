// Records -> token ids with loss labels, ready for batching.
//
// The rendered text is tokenized as a whole between the special ids a template places (BOS,
// llama2's per-exchange <s> and </s>), as a served model sees it; each token takes the loss flag
// of the prompt or response it starts in: [BOS] prompt1 response1 prompt2 response2 ... [EOS].
// A template that renders the BOS itself (the first turn's bos_before_prompt) places the only one.
// labels[i] = ids[i] where the loss applies (responses, EOS; prompts too with train_on_inputs),
// -100 elsewhere (BOS, prompts). The first token never carries loss: nothing in the sample
// predicts it, and in a packed row the previous sample must not. The causal shift (logits at i
// predict labels[i + 1]) happens in the loss, not here.
#pragma once

#include "data/prompt_format.h"
#include "data/records.h"
#include "data/tokenizer.h"

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

constexpr int64_t kIgnoreLabel = -100;

struct Example {
  std::vector<int64_t> ids;
  std::vector<int64_t> labels;  // same length as ids
  std::string origin;           // "<file>:<line>" of its record, for reports about the sample
};

struct ExampleOptions {
  int64_t max_seq_len = 2048;
  std::string overlong = "truncate";  // truncate (keep the first max_seq_len tokens) | drop
  bool train_on_inputs = false;       // prompts carry loss too
  bool add_bos = true;                // usually Tokenizer::add_bos_default()
  bool add_eos = true;                // EOS after the last response, with loss
  std::string chat_template = "chatml";
  // Records that do not fit the format (missing field, unknown role) are logged and counted in
  // ExampleStats::skipped_lines instead of failing; load_examples also skips malformed lines.
  bool skip_bad_lines = false;
  // load_examples: a record (.jsonl line, .json element, .txt file) longer than this is a bad
  // record (data.max_record_bytes).
  int64_t max_record_bytes = kDefaultMaxRecordBytes;
};

struct ExampleStats {
  int64_t samples = 0;        // examples kept
  int64_t truncated = 0;      // kept, cut to max_seq_len
  int64_t dropped = 0;        // too long with overlong = drop, or no loss token left
  int64_t skipped_lines = 0;  // bad records skipped (skip_bad_lines)
  int64_t total_tokens = 0;   // over the kept examples
  int64_t loss_tokens = 0;
  // Kept examples by length in 8 equal bins over (0, max_seq_len]: bin b counts lengths L with
  // (L - 1) * 8 / max_seq_len == b (integer division), so full-length ones land in bin 7.
  std::vector<int64_t> length_histogram;

  // One line for the log: "1500 samples, 0 truncated, ...".
  std::string summary() const;
};

// Tokenizes every record. Throws Error(kConfig) for a bad format, field rename, chat template or
// option, and when no example is left ("... max_seq_len too small?"); Error(kFormat) for a record
// that does not fit the format (unless skip_bad_lines). `stats` is optional.
std::vector<Example> build_examples(const std::vector<Record>& records, const std::string& format,
                                    const FieldMap& fields, const Tokenizer& tokenizer,
                                    const ExampleOptions& options, ExampleStats* stats = nullptr);

// One record's example before the length rules (no truncation, no drop): its turns tokenized with
// their loss labels, origin set. Throws as format_record, errors naming the record.
Example tokenize_record(const Record& record, const std::string& format, const FieldMap& fields,
                        const Tokenizer& tokenizer, const ExampleOptions& options);
// Labels that carry loss after the causal shift (labels[1:] != kIgnoreLabel).
int64_t count_example_loss_tokens(const Example& example);

// read_records + build_examples, with options.skip_bad_lines applied to both (skipped_lines
// counts malformed lines and records that do not fit the format).
std::vector<Example> load_examples(const std::string& path, const std::string& format,
                                   const FieldMap& fields, const Tokenizer& tokenizer,
                                   const ExampleOptions& options, ExampleStats* stats = nullptr);

}  // namespace qtrain

// Preference data (data.format: preference): records of a prompt with a chosen and a rejected
// response, in TRL's field names, tokenized into two examples per pair that share the prompt.
//
//   plain           {"prompt": "...", "chosen": "...", "rejected": "..."}: no template, as the
//                   completion format renders a prompt and its completion (BOS, the prompt
//                   without loss, the response and EOS with loss).
//   conversational  "prompt" a list of messages, "chosen" / "rejected" lists of messages (the
//                   assistant's answer) or strings (the assistant's content): each rendered as
//                   the chat format renders prompt + answer, with the data.template chat
//                   template; loss on the answer's assistant turns.
//   implicit prompt no "prompt": "chosen" and "rejected" are whole conversations, and the
//                   messages they begin with in common are the prompt (TRL's extract_prompt).
// Field names can be renamed (data.fields: {prompt: question}).
//
// Length rules apply to the pair: with overlong: drop a pair goes when either side is longer
// than max_seq_len; with truncate both sides are cut; a pair where either side is left without a
// token to learn from is dropped.
#pragma once

#include "data/examples.h"
#include "data/records.h"
#include "data/tokenizer.h"

#include <string>
#include <vector>

namespace qtrain {

struct PreferencePairs {
  std::vector<Example> chosen;  // pair i: chosen[i] and rejected[i], same origin
  std::vector<Example> rejected;
};

// The fields format preference has (what data.fields may rename).
const std::vector<std::string>& preference_fields();

// Throws Error(kFormat) naming the record's file, line and field for a missing or mistyped
// field and for conversational records that do not fit the chat format (unless
// options.skip_bad_lines: then the record is skipped and counted); Error(kConfig) for
// conversational records without a chat template (options.chat_template) and when no pair is
// left. Stats count pairs (samples) and the tokens of both sides.
PreferencePairs build_preference_pairs(const std::vector<Record>& records, const FieldMap& fields,
                                       const Tokenizer& tokenizer, const ExampleOptions& options,
                                       ExampleStats* stats = nullptr);

// read_records + build_preference_pairs.
PreferencePairs load_preference_pairs(const std::string& path, const FieldMap& fields,
                                      const Tokenizer& tokenizer, const ExampleOptions& options,
                                      ExampleStats* stats = nullptr);

}  // namespace qtrain

#include "data/preference_pairs.h"

#include "core/error.h"
#include "core/log.h"
#include "data/prompt_format.h"

#include <algorithm>
#include <utility>

namespace qtrain {
namespace {

using json = nlohmann::json;

std::string field_name(const FieldMap& fields, const std::string& canonical) {
  const auto it = fields.find(canonical);
  return it == fields.end() ? canonical : it->second;
}

[[noreturn]] void bad_field(const Record& record, const std::string& field,
                            const std::string& why) {
  throw_error(ErrorKind::kFormat, why, {.file = record.file, .field = field, .line = record.line});
}

// A response side as messages: a list as it is, a string as one assistant message.
json as_messages(const json& side) {
  if (side.is_string()) return json::array({{{"role", "assistant"}, {"content", side}}});
  return side;
}

bool is_chat_template(const std::string& name) {
  const auto& known = chat_templates();
  return is_jinja_chat_template(name) || std::find(known.begin(), known.end(), name) != known.end();
}

// The two records (format, value) the pair renders as.
struct PairRecords {
  std::string format;
  Record chosen, rejected;
};

PairRecords pair_records(const Record& record, const FieldMap& fields,
                         const std::string& chat_template) {
  const std::string prompt_key = field_name(fields, "prompt");
  const std::string chosen_key = field_name(fields, "chosen");
  const std::string rejected_key = field_name(fields, "rejected");
  const json& value = record.value;
  for (const std::string& key : {chosen_key, rejected_key}) {
    if (!value.contains(key)) bad_field(record, key, "missing field '" + key + "'");
    if (!value[key].is_string() && !value[key].is_array()) {
      bad_field(record, key, "'" + key + "' must be a string or a list of messages");
    }
  }
  const bool has_prompt = value.contains(prompt_key);
  if (has_prompt && !value[prompt_key].is_string() && !value[prompt_key].is_array()) {
    bad_field(record, prompt_key, "'" + prompt_key + "' must be a string or a list of messages");
  }
  PairRecords out;
  out.chosen = out.rejected = Record{json::object(), record.file, record.line};
  const bool plain = has_prompt && value[prompt_key].is_string();
  if (plain) {
    for (const std::string& key : {chosen_key, rejected_key}) {
      if (!value[key].is_string()) {
        bad_field(record, key, "a plain '" + prompt_key + "' string needs a '" + key + "' string");
      }
    }
    out.format = "completion";
    out.chosen.value = {{"prompt", value[prompt_key]}, {"completion", value[chosen_key]}};
    out.rejected.value = {{"prompt", value[prompt_key]}, {"completion", value[rejected_key]}};
    return out;
  }
  if (!is_chat_template(chat_template)) {
    throw_error(ErrorKind::kConfig,
                "conversational preference records are rendered with a chat template; set "
                "data.template to one (" +
                    [] {
                      std::string names;
                      for (const auto& n : chat_templates()) names += n + ", ";
                      return names;
                    }() +
                    "or auto: the model's own)",
                {.file = record.file, .field = "data.template", .line = record.line});
  }
  json prompt = json::array();
  json chosen = as_messages(value[chosen_key]);
  json rejected = as_messages(value[rejected_key]);
  if (has_prompt) {
    prompt = value[prompt_key];
  } else {
    // Implicit prompt: the messages both conversations begin with.
    if (!chosen.is_array() || !rejected.is_array()) {
      bad_field(record, prompt_key, "missing field '" + prompt_key + "'");
    }
    size_t shared = 0;
    while (shared < chosen.size() && shared < rejected.size() &&
           chosen[shared] == rejected[shared]) {
      ++shared;
    }
    prompt = json(std::vector<json>(chosen.begin(), chosen.begin() + shared));
    chosen = json(std::vector<json>(chosen.begin() + shared, chosen.end()));
    rejected = json(std::vector<json>(rejected.begin() + shared, rejected.end()));
  }
  auto conversation = [&](const json& answer) {
    json messages = prompt;
    for (const json& m : answer) messages.push_back(m);
    return json{{"messages", messages}};
  };
  out.format = "chat";
  out.chosen.value = conversation(chosen);
  out.rejected.value = conversation(rejected);
  return out;
}

void cut(Example& example, int64_t max_len) {
  example.ids.resize(static_cast<size_t>(max_len));
  example.labels.resize(static_cast<size_t>(max_len));
}

}  // namespace

const std::vector<std::string>& preference_fields() {
  static const std::vector<std::string> fields = {"prompt", "chosen", "rejected"};
  return fields;
}

PreferencePairs build_preference_pairs(const std::vector<Record>& records, const FieldMap& fields,
                                       const Tokenizer& tokenizer, const ExampleOptions& options,
                                       ExampleStats* stats) {
  for (const auto& [name, renamed] : fields) {
    const auto& known = preference_fields();
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      throw_error(ErrorKind::kConfig,
                  "format 'preference' has no field '" + name +
                      "' to rename; its fields: prompt, chosen, rejected",
                  {.field = "data.fields"});
    }
  }
  ExampleStats counts;
  counts.length_histogram.assign(8, 0);
  PreferencePairs out;
  int64_t masked = 0;
  for (const Record& record : records) {
    Example chosen, rejected;
    try {
      const PairRecords pair = pair_records(record, fields, options.chat_template);
      chosen = tokenize_record(pair.chosen, pair.format, {}, tokenizer, options);
      rejected = tokenize_record(pair.rejected, pair.format, {}, tokenizer, options);
    } catch (const Error& e) {
      if (!options.skip_bad_lines || e.kind() != ErrorKind::kFormat) throw;
      if (++counts.skipped_lines <= 5) log::warn("skipping bad preference record: ", e.what());
      continue;
    }
    const auto longest = static_cast<int64_t>(std::max(chosen.ids.size(), rejected.ids.size()));
    const bool overlong = longest > options.max_seq_len;
    if (overlong && options.overlong == "drop") {
      ++counts.dropped;
      continue;
    }
    if (overlong) {
      for (Example* side : {&chosen, &rejected}) {
        if (static_cast<int64_t>(side->ids.size()) > options.max_seq_len) {
          cut(*side, options.max_seq_len);
        }
      }
    }
    const int64_t loss_c = count_example_loss_tokens(chosen);
    const int64_t loss_r = count_example_loss_tokens(rejected);
    if (loss_c == 0 || loss_r == 0) {
      ++counts.dropped;
      ++masked;
      continue;
    }
    if (overlong) ++counts.truncated;
    ++counts.samples;
    counts.total_tokens += static_cast<int64_t>(chosen.ids.size() + rejected.ids.size());
    counts.loss_tokens += loss_c + loss_r;
    const auto kept = static_cast<int64_t>(std::max(chosen.ids.size(), rejected.ids.size()));
    ++counts.length_histogram[(kept - 1) * 8 / options.max_seq_len];
    out.chosen.push_back(std::move(chosen));
    out.rejected.push_back(std::move(rejected));
  }
  if (masked > 0 && !log::quiet_rank()) {
    log::warn(masked, " preference pair(s) dropped with a side left without a token to learn from ",
              "within max_seq_len ", options.max_seq_len, "; raise data.max_seq_len");
  }
  if (out.chosen.empty()) {
    const std::string source = records.empty() ? std::string("the dataset") : records.front().file;
    throw_error(ErrorKind::kConfig,
                "no usable preference pair in " + source + ": " + std::to_string(counts.dropped) +
                    " dropped (longer than max_seq_len " + std::to_string(options.max_seq_len) +
                    " or without a token to learn), " + std::to_string(counts.skipped_lines) +
                    " skipped as bad; is max_seq_len too small?");
  }
  if (stats) *stats = counts;
  return out;
}

PreferencePairs load_preference_pairs(const std::string& path, const FieldMap& fields,
                                      const Tokenizer& tokenizer, const ExampleOptions& options,
                                      ExampleStats* stats) {
  int64_t bad_lines = 0;
  const std::vector<Record> records =
      read_records(path, options.skip_bad_lines, &bad_lines, options.max_record_bytes);
  ExampleStats counts;
  PreferencePairs pairs = build_preference_pairs(records, fields, tokenizer, options, &counts);
  counts.skipped_lines += bad_lines;
  if (stats) *stats = counts;
  return pairs;
}

}  // namespace qtrain

// Reading JSON text (config.json, adapter_config.json, tokenizer.json, dataset records, ...)
// with errors that name the file. Every JSON the tools read goes through parse_json_text.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace qtrain {

// Far deeper than any config, tokenizer or dataset record (they nest fewer than 10 levels), far
// shallower than what overflows the stack in code that walks a value recursively (dump()).
inline constexpr int kMaxJsonDepth = 256;

// nlohmann::json::parse(text), with two refusals made while parsing, before any recursive code
// sees the value: nesting deeper than `max_depth` arrays and objects, and a key given twice in
// one object (nlohmann would keep the last one silently). Both throw Error(kFormat) naming
// `source` and the line, with the key path (`rope_scaling.factor`, `added_tokens[3].id`) as the
// field: "JSON nested deeper than <max_depth> levels", "duplicate JSON key '<key>'". Syntax
// errors throw nlohmann's exceptions unchanged, so callers keep their own messages for them.
nlohmann::json parse_json_text(std::string_view text, const std::string& source,
                               int max_depth = kMaxJsonDepth);

// A config-like JSON file of at most kMaxConfigJsonBytes; `what` names it in the messages of
// read_small_file ("cannot open <what>", ...). A syntax error throws Error(kFormat)
// "invalid JSON: <nlohmann message>"; see parse_json_text for the other refusals.
nlohmann::json read_json_file(const std::string& path, const std::string& what = "JSON file");

}  // namespace qtrain

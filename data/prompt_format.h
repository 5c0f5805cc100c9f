// Dataset records -> the text the model sees, split into the part it is conditioned on (prompt,
// no loss) and the part it learns to produce (response, loss). Concatenating every prompt and
// response of a record in order gives the exact rendered text.
//
//   alpaca      instruction, input (optional, may be empty), output: the Stanford Alpaca template
//   completion  prompt, completion: no template
//   text        text: all of it is response (trained on)
//   chat        messages [{role, content}] or ShareGPT conversations [{from, value}], rendered
//               with a chat template (chatml: "<|im_start|>{role}\n{content}<|im_end|>\n");
//               one PromptParts per assistant message: the prompt holds the messages before it
//               and the assistant header, the response its content and footer. Roles: system,
//               user, assistant (ShareGPT's human / gpt mean user / assistant). Messages after the
//               last assistant message are dropped (nothing to learn from them).
#pragma once

#include "data/records.h"

#include <map>
#include <string>
#include <vector>

namespace qtrain {

struct PromptParts {
  std::string prompt;
  std::string response;
};

// Field renames, canonical name -> the name used in the records ({"output": "answer"}).
using FieldMap = std::map<std::string, std::string>;

const std::vector<std::string>& prompt_formats();  // alpaca, completion, text, chat
const std::vector<std::string>& chat_templates();  // chatml
// The canonical field names of a format (what FieldMap keys may be).
const std::vector<std::string>& prompt_format_fields(const std::string& format);

// Throws Error(kConfig) for an unknown format or chat template (listing the known ones) and for a
// rename of a field the format does not have (listing the ones it has).
void check_prompt_format(const std::string& format, const FieldMap& fields = {},
                         const std::string& chat_template = "chatml");

// The prompt/response turns of one record (at least one). Throws Error(kFormat) naming the
// record's file, line and field when a field is missing or not a string (or, for chat, not a
// list of message objects), for an unknown role and for a conversation without an assistant
// message; Error(kConfig) as check_prompt_format.
std::vector<PromptParts> format_record(const Record& record, const std::string& format,
                                       const FieldMap& fields = {},
                                       const std::string& chat_template = "chatml");

}  // namespace qtrain

// Dataset records -> the text the model sees, split into the part it is conditioned on (prompt,
// no loss) and the part it learns to produce (response, loss). Concatenating every prompt and
// response of a record in order gives the exact rendered text.
//
//   alpaca      instruction, input (optional, may be empty), output: the Stanford Alpaca template
//   completion  prompt, completion: no template
//   text        text: all of it is response (trained on)
//   chat        messages [{role, content}] or ShareGPT conversations [{from, value}], rendered
//               with a chat template as the model's own Jinja template renders it:
//                 chatml  "<|im_start|>{role}\n{content}<|im_end|>\n" (Qwen)
//                 llama3  "<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>"
//                 llama2  "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user|trim} [/INST]
//                         {assistant|trim} </s>" per exchange (system only in the first)
//                 mistral "[INST] {user} [/INST]{assistant}</s>" per exchange, no system role
//               (the tokenizer's BOS opens every sample). One PromptParts per assistant message:
//               the prompt holds the messages before it and the assistant header, the response
//               its content and footer. Roles: system, user, assistant (ShareGPT's human / gpt
//               mean user / assistant); llama2 and mistral need user and assistant to alternate.
//               Messages after the last assistant message are dropped (nothing to learn).
//               A template name "jinja:<tokenizer_config.json path>" renders that model's own
//               Jinja chat_template instead (data/chat_template_jinja.h): the turns are its
//               assistant spans, and the roles go to the template as they are canonicalised.
#pragma once

#include "data/records.h"

#include <map>
#include <string>
#include <vector>

namespace qtrain {

struct PromptParts {
  std::string prompt;
  std::string response;
  // Special tokens the template places as ids, not text (llama2's per-exchange "<s>" and "</s>",
  // mistral's "</s>"): a SentencePiece model would read "<s>" as three characters.
  bool bos_before_prompt = false;
  bool eos_after_response = false;  // the EOS carries loss like the response
};

// Field renames, canonical name -> the name used in the records ({"output": "answer"}).
using FieldMap = std::map<std::string, std::string>;

const std::vector<std::string>& prompt_formats();  // alpaca, completion, text, chat
const std::vector<std::string>& chat_templates();  // chatml, llama3, llama2, mistral

// Which known template a model's own Jinja chat_template (tokenizer_config.json) is, by the
// markers only that template uses; Error(kUnsupported) naming `source` when it is none of them
// (qtrain never renders a template it cannot reproduce exactly).
std::string recognize_chat_template(const std::string& jinja, const std::string& source);
// data.template auto: "jinja:" + `source` (the model's own template, rendered) when qtrain has the
// Jinja engine, else recognize_chat_template(jinja, source).
std::string model_chat_template_name(const std::string& jinja, const std::string& source);
bool is_jinja_chat_template(const std::string& name);  // starts with "jinja:"
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

// A model's own chat template (tokenizer_config.json "chat_template", Jinja), rendered as
// transformers' apply_chat_template renders it (trim_blocks and lstrip_blocks on; messages,
// add_generation_prompt and the special tokens bos_token, eos_token, unk_token, pad_token as
// variables), by llama.cpp's Jinja engine (common/jinja, fetched by scripts/fetch_jinja.sh; see
// data/CMakeLists.txt). Without the engine every constructor throws Error(kUnsupported).
//
// Training needs the assistant turns of the rendered text (the loss falls on them):
//   - a template with {% generation %} ... {% endgeneration %} marks them itself (transformers'
//     return_assistant_tokens_mask): the spans are the text rendered inside those tags;
//   - otherwise the rendered-prefix method: for assistant message i, the span runs from the end
//     of render(messages[:i], add_generation_prompt=true) to the end of render(messages[:i+1]),
//     and both must be prefixes of the whole conversation's rendering (Error(kUnsupported) when
//     the template renders history differently, e.g. dropping earlier reasoning).
#pragma once

#include "data/prompt_format.h"

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qtrain {

// Whether qtrain was built with the Jinja engine (scripts/fetch_jinja.sh before configuring).
bool jinja_engine_available();

struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
};

struct RenderedChat {
  std::string text;  // render(messages, add_generation_prompt=false)
  // Byte ranges [first, second) of `text`, in order, one per assistant turn the template marks.
  std::vector<std::pair<size_t, size_t>> assistant_spans;
};

class JinjaChatTemplate {
 public:
  // Parses `source`. `special_tokens` maps bos_token / eos_token / ... to their text. Throws
  // Error(kUnsupported) naming `origin` and the construct the engine cannot parse (or saying the
  // engine is missing from this build).
  JinjaChatTemplate(const std::string& source, std::map<std::string, std::string> special_tokens,
                    std::string origin);
  ~JinjaChatTemplate();
  JinjaChatTemplate(const JinjaChatTemplate&) = delete;
  JinjaChatTemplate& operator=(const JinjaChatTemplate&) = delete;

  // The template of a tokenizer_config.json (its chat_template string, or the entry named
  // "default" of a list of named templates) with its special tokens (strings or {"content": ...}).
  // Error(kIo)/(kFormat) naming the file when it cannot be read or has no template.
  static std::shared_ptr<const JinjaChatTemplate> from_tokenizer_config(const std::string& path);

  // apply_chat_template(messages, tokenize=False, add_generation_prompt=...). Error(kFormat) with
  // the template's message when it calls raise_exception (the conversation does not fit it),
  // Error(kUnsupported) naming the construct the engine cannot run.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  // The conversation and its assistant spans (see the top of this file).
  RenderedChat render_for_training(const std::vector<ChatMessage>& messages) const;

  bool has_generation_tags() const;
  const std::string& origin() const;
  // The text of a special token ("" when the tokenizer has none).
  std::string special_token(const std::string& name) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The prompt/response turns of a rendered conversation: turn k's prompt is the text between the
// previous span and span k, its response the span; text after the last span is dropped. A BOS
// text opening a prompt becomes bos_before_prompt and an EOS text closing a response
// eos_after_response, so a SentencePiece tokenizer (which reads "<s>" as characters) places the
// ids.
std::vector<PromptParts> chat_turns_of(const RenderedChat& chat, const std::string& bos_token,
                                       const std::string& eos_token);

}  // namespace qtrain

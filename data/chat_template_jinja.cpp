#include "data/chat_template_jinja.h"

#include "core/error.h"
#include "data/tokenizer.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#ifdef QTRAIN_HAVE_LLAMA_JINJA
#include "jinja/lexer.h"
#include "jinja/parser.h"
#include "jinja/runtime.h"
#include "jinja/value.h"
#include "json.h"
#endif

namespace qtrain {

namespace {

std::string token_text(const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return "";
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error(ErrorKind::kIo, "cannot open it", {.file = path});
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

#ifdef QTRAIN_HAVE_LLAMA_JINJA

bool jinja_engine_available() {
  return true;
}

namespace {

// What a {% generation %} / {% endgeneration %} tag renders as once rewritten (see
// mark_generation_tags); conversations that contain these texts are refused.
const char* const kGenerationBegin = "<|qtrain:generation|>";
const char* const kGenerationEnd = "<|qtrain:endgeneration|>";

const std::regex& generation_tag() {
  static const std::regex tag(R"(\{%([-+]?)\s*(end)?generation\s*([-+]?)%\})");
  return tag;
}

// transformers renders {% generation %} tags as nothing and records where their text went;
// llama.cpp's engine drops them. An if-block that prints a marker keeps the tag's whitespace
// control: "{%- generation %}" still trims before it, trim_blocks still eats the newline after it.
std::string mark_generation_tags(const std::string& source) {
  std::string out;
  auto last = source.cbegin();
  for (std::sregex_iterator it(source.begin(), source.end(), generation_tag()), end; it != end;
       ++it) {
    const std::smatch& m = *it;
    out.append(last, m[0].first);
    const std::string marker = m[2].matched ? kGenerationEnd : kGenerationBegin;
    out += "{%" + m[1].str() + " if true %}{{ '" + marker + "' }}{% endif " + m[3].str() + "%}";
    last = m[0].second;
  }
  out.append(last, source.cend());
  return out;
}

struct CompiledTemplate {
  std::string source;
  jinja::program program;
};

CompiledTemplate compile(const std::string& source, const std::string& origin) {
  try {
    jinja::lexer lexer;
    const jinja::lexer_result tokens = lexer.tokenize(source);
    return {tokens.source, jinja::parse_from_tokens(tokens)};
  } catch (const std::exception& e) {
    throw_error(ErrorKind::kUnsupported,
                std::string("the Jinja engine cannot parse the chat_template: ") + e.what(),
                {.file = origin, .field = "chat_template"});
  }
}

// raise_exception("...") reaches us as "...Jinja Exception: <message>" inside the engine's
// source-location wrapper; everything else is the engine failing on a construct.
[[noreturn]] void rethrow_render_error(const std::exception& e, const std::string& origin) {
  const std::string what = e.what();
  const std::string raised = "Jinja Exception: ";
  const size_t at = what.find(raised);
  if (at != std::string::npos) {
    throw_error(ErrorKind::kFormat,
                "the chat_template refuses this conversation: " + what.substr(at + raised.size()),
                {.file = origin, .field = "chat_template"});
  }
  throw_error(ErrorKind::kUnsupported, "the Jinja engine cannot render the chat_template: " + what,
              {.file = origin, .field = "chat_template"});
}

}  // namespace

struct JinjaChatTemplate::Impl {
  CompiledTemplate plain;
  std::unique_ptr<CompiledTemplate> marked;  // with generation tags rewritten; null without tags
  std::map<std::string, std::string> special_tokens;
  std::string origin;

  std::string run(const CompiledTemplate& compiled, const std::vector<ChatMessage>& messages,
                  bool add_generation_prompt) const {
    // Ordered, so a template that prints a message dict sees transformers' key order.
    nlohmann::ordered_json vars = nlohmann::ordered_json::object();
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const ChatMessage& message : messages) {
      list.push_back({{"role", message.role}, {"content", message.content}});
    }
    vars["messages"] = std::move(list);
    vars["tools"] = nullptr;  // apply_chat_template passes tools=None and documents=None
    vars["documents"] = nullptr;
    vars["add_generation_prompt"] = add_generation_prompt;
    for (const auto& [name, text] : special_tokens) vars[name] = text;
    try {
      jinja::context context(compiled.source);
      jinja::global_from_json(context, common_json::parse(vars.dump()), false);
      jinja::runtime runtime(context);
      const jinja::value results = runtime.execute(compiled.program);
      return jinja::runtime::gather_string_parts(results)->as_string().str();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      rethrow_render_error(e, origin);
    }
  }
};

JinjaChatTemplate::JinjaChatTemplate(const std::string& source,
                                     std::map<std::string, std::string> special_tokens,
                                     std::string origin)
    : impl_(std::make_unique<Impl>()) {
  impl_->origin = std::move(origin);
  impl_->special_tokens = std::move(special_tokens);
  impl_->plain = compile(source, impl_->origin);
  if (std::regex_search(source, generation_tag())) {
    impl_->marked =
        std::make_unique<CompiledTemplate>(compile(mark_generation_tags(source), impl_->origin));
  }
}

std::string JinjaChatTemplate::render(const std::vector<ChatMessage>& messages,
                                      bool add_generation_prompt) const {
  return impl_->run(impl_->plain, messages, add_generation_prompt);
}

RenderedChat JinjaChatTemplate::render_for_training(
    const std::vector<ChatMessage>& messages) const {
  RenderedChat out;
  if (impl_->marked) {
    for (const ChatMessage& message : messages) {
      if (message.content.find(kGenerationBegin) != std::string::npos ||
          message.content.find(kGenerationEnd) != std::string::npos) {
        throw_error(ErrorKind::kFormat, std::string("a message contains qtrain's marker text ") +
                                            kGenerationBegin + " or " + kGenerationEnd);
      }
    }
    const std::string marked = impl_->run(*impl_->marked, messages, false);
    const std::string begin = kGenerationBegin, end = kGenerationEnd;
    size_t open = std::string::npos;
    for (size_t i = 0; i < marked.size();) {
      if (marked.compare(i, begin.size(), begin) == 0) {
        if (open != std::string::npos) break;
        open = out.text.size();
        i += begin.size();
      } else if (marked.compare(i, end.size(), end) == 0) {
        if (open == std::string::npos) break;
        if (out.text.size() > open) out.assistant_spans.emplace_back(open, out.text.size());
        open = std::string::npos;
        i += end.size();
      } else {
        out.text += marked[i++];
      }
    }
    if (out.text.size() + out.assistant_spans.size() * (begin.size() + end.size()) !=
            marked.size() ||
        open != std::string::npos) {
      throw_error(ErrorKind::kUnsupported,
                  "the chat_template's {% generation %} / {% endgeneration %} tags do not pair up",
                  {.file = impl_->origin, .field = "chat_template"});
    }
    return out;
  }
  out.text = render(messages, false);
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role != "assistant") continue;
    const std::vector<ChatMessage> before(messages.begin(), messages.begin() + i);
    const std::vector<ChatMessage> through(messages.begin(), messages.begin() + i + 1);
    const std::string prompt = render(before, true);
    const std::string turn = render(through, false);
    if (!starts_with(turn, prompt) || !starts_with(out.text, turn)) {
      throw_error(ErrorKind::kUnsupported,
                  "the chat_template renders the conversation up to message " + std::to_string(i) +
                      " differently from the start of the whole conversation, so its assistant "
                      "turns cannot be found (the rendered-prefix method); a template with "
                      "{% generation %} tags, or a named data.template, avoids this",
                  {.file = impl_->origin, .field = "chat_template"});
    }
    if (turn.size() == prompt.size()) {
      throw_error(ErrorKind::kUnsupported,
                  "the chat_template renders assistant message " + std::to_string(i) +
                      " as nothing, so there is no turn to learn",
                  {.file = impl_->origin, .field = "chat_template"});
    }
    out.assistant_spans.emplace_back(prompt.size(), turn.size());
  }
  return out;
}

bool JinjaChatTemplate::has_generation_tags() const {
  return impl_->marked != nullptr;
}

#else  // no engine

bool jinja_engine_available() {
  return false;
}

struct JinjaChatTemplate::Impl {
  std::map<std::string, std::string> special_tokens;
  std::string origin;
};

JinjaChatTemplate::JinjaChatTemplate(const std::string&, std::map<std::string, std::string>,
                                     std::string origin) {
  throw_error(ErrorKind::kUnsupported,
              "this qtrain was built without the Jinja engine that renders a model's own "
              "chat_template (run scripts/fetch_jinja.sh, then reconfigure); name the template "
              "instead",
              {.file = origin, .field = "chat_template"});
}

std::string JinjaChatTemplate::render(const std::vector<ChatMessage>&, bool) const {
  return "";
}
RenderedChat JinjaChatTemplate::render_for_training(const std::vector<ChatMessage>&) const {
  return {};
}
bool JinjaChatTemplate::has_generation_tags() const {
  return false;
}

#endif

JinjaChatTemplate::~JinjaChatTemplate() = default;

const std::string& JinjaChatTemplate::origin() const {
  return impl_->origin;
}

std::string JinjaChatTemplate::special_token(const std::string& name) const {
  const auto it = impl_->special_tokens.find(name);
  return it == impl_->special_tokens.end() ? std::string() : it->second;
}

std::shared_ptr<const JinjaChatTemplate> JinjaChatTemplate::from_tokenizer_config(
    const std::string& path) {
  const nlohmann::json config = read_tokenizer_config(path);
  std::string source;
  const auto it = config.is_object() ? config.find("chat_template") : config.end();
  if (it != config.end() && it->is_string()) {
    source = it->get<std::string>();
  } else if (it != config.end() && it->is_array()) {
    for (const auto& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" &&
          entry.value("template", nlohmann::json()).is_string()) {
        source = entry["template"].get<std::string>();
      }
    }
  } else {
    // transformers 5 saves the template beside the config.
    const std::string jinja_path =
        (std::filesystem::path(path).parent_path() / "chat_template.jinja").string();
    std::error_code ec;
    if (std::filesystem::exists(jinja_path, ec)) source = read_text_file(jinja_path);
  }
  if (source.empty()) {
    throw_error(ErrorKind::kFormat,
                "no chat_template string (data.template auto needs one; name the template "
                "instead)",
                {.file = path, .field = "chat_template"});
  }
  std::map<std::string, std::string> special_tokens;
  for (const char* name : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    const auto token = config.find(name);
    if (token != config.end()) special_tokens[name] = token_text(*token);
  }
  return std::make_shared<const JinjaChatTemplate>(source, std::move(special_tokens), path);
}

std::vector<PromptParts> chat_turns_of(const RenderedChat& chat, const std::string& bos_token,
                                       const std::string& eos_token) {
  std::vector<PromptParts> turns;
  size_t done = 0;
  for (const auto& [begin, end] : chat.assistant_spans) {
    PromptParts turn;
    turn.prompt = chat.text.substr(done, begin - done);
    turn.response = chat.text.substr(begin, end - begin);
    if (!bos_token.empty() && starts_with(turn.prompt, bos_token)) {
      turn.prompt.erase(0, bos_token.size());
      turn.bos_before_prompt = true;
    }
    if (!eos_token.empty() && turn.response.size() >= eos_token.size() &&
        turn.response.compare(turn.response.size() - eos_token.size(), eos_token.size(),
                              eos_token) == 0) {
      turn.response.resize(turn.response.size() - eos_token.size());
      turn.eos_after_response = true;
    }
    turns.push_back(std::move(turn));
    done = end;
  }
  return turns;
}

}  // namespace qtrain

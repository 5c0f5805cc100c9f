#include "data/prompt_format.h"

#include "core/error.h"
#include "data/chat_template_jinja.h"

#include <algorithm>
#include <mutex>

namespace qtrain {

namespace {

// The Stanford Alpaca templates:
//   with input:    kAlpacaIntroWithInput "### Instruction:\n{instruction}\n\n###
//   Input:\n{input}\n\n
//                  ### Response:\n"
//   without input: kAlpacaIntro "### Instruction:\n{instruction}\n\n### Response:\n"
const char* const kAlpacaIntroWithInput =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n";
const char* const kAlpacaIntro =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n";

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

bool contains(const std::vector<std::string>& items, const std::string& item) {
  return std::find(items.begin(), items.end(), item) != items.end();
}

// Reads the fields of one record under their renamed names; errors name file, line and field.
class FieldReader {
 public:
  FieldReader(const Record& record, const FieldMap& fields) : record_(record), fields_(fields) {}

  std::string name(const std::string& canonical) const {
    const auto it = fields_.find(canonical);
    return it == fields_.end() ? canonical : it->second;
  }
  const nlohmann::json* find(const std::string& canonical) const {
    const auto it = record_.value.find(name(canonical));
    return it == record_.value.end() || it->is_null() ? nullptr : &*it;
  }
  std::string required_string(const std::string& canonical) const {
    const nlohmann::json* value = find(canonical);
    if (!value) fail("missing field", name(canonical));
    return string_of(*value, name(canonical));
  }
  std::string optional_string(const std::string& canonical) const {
    const nlohmann::json* value = find(canonical);
    return value ? string_of(*value, name(canonical)) : std::string();
  }
  std::string string_of(const nlohmann::json& value, const std::string& field) const {
    if (!value.is_string())
      fail(std::string("expected a string, found ") + value.type_name(), field);
    return value.get<std::string>();
  }
  [[noreturn]] void fail(const std::string& message, const std::string& field) const {
    throw_error(ErrorKind::kFormat, message,
                {.file = record_.file, .field = field, .line = record_.line});
  }

 private:
  const Record& record_;
  const FieldMap& fields_;
};

std::vector<PromptParts> format_alpaca(const FieldReader& reader) {
  const std::string instruction = reader.required_string("instruction");
  const std::string input = reader.optional_string("input");
  std::string prompt = input.empty() ? kAlpacaIntro : kAlpacaIntroWithInput;
  prompt += "### Instruction:\n" + instruction + "\n\n";
  if (!input.empty()) prompt += "### Input:\n" + input + "\n\n";
  prompt += "### Response:\n";
  return {{std::move(prompt), reader.required_string("output")}};
}

std::string trim(const std::string& text) {
  const char* space = " \t\n\r\f\v";
  const size_t first = text.find_first_not_of(space);
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(space) - first + 1);
}

// A template where each message is header(role) + content + footer.
struct ChatTemplate {
  std::string name;
  std::string (*header)(const std::string& role);
  std::string footer;
  bool trim_content = false;
};

std::string chatml_header(const std::string& role) {
  return "<|im_start|>" + role + "\n";
}

std::string llama3_header(const std::string& role) {
  return "<|start_header_id|>" + role + "<|end_header_id|>\n\n";
}

const std::vector<ChatTemplate>& chat_template_table() {
  static const std::vector<ChatTemplate> table = {
      {"chatml", chatml_header, "<|im_end|>\n"},
      {"llama3", llama3_header, "<|eot_id|>", /*trim_content=*/true},
  };
  return table;
}

// [INST] templates: exchanges of a user and an assistant message.
bool is_inst_template(const std::string& name) {
  return name == "llama2" || name == "mistral";
}

const ChatTemplate* find_chat_template(const std::string& name) {
  for (const auto& entry : chat_template_table()) {
    if (entry.name == name) return &entry;
  }
  if (is_inst_template(name)) return nullptr;
  throw_error(ErrorKind::kConfig,
              "unknown chat template '" + name + "'; known: " + join(chat_templates()));
}

std::string canonical_role(const std::string& role) {
  if (role == "system" || role == "user" || role == "assistant") return role;
  if (role == "human") return "user";
  if (role == "gpt") return "assistant";
  return "";
}

struct Message {
  std::string role;  // system | user | assistant
  std::string content;
  std::string where;  // the record field, for errors
};

std::vector<Message> read_messages(const FieldReader& reader) {
  // OpenAI-style messages, else ShareGPT conversations.
  const bool openai = reader.find("messages") != nullptr || reader.find("conversations") == nullptr;
  const std::string list_field = reader.name(openai ? "messages" : "conversations");
  const std::string role_key = reader.name(openai ? "role" : "from");
  const std::string content_key = reader.name(openai ? "content" : "value");
  const nlohmann::json* messages = reader.find(openai ? "messages" : "conversations");
  if (!messages) {
    reader.fail("missing field (or '" + reader.name("conversations") + "')", list_field);
  }
  if (!messages->is_array() || messages->empty()) {
    reader.fail("expected a non-empty list of messages", list_field);
  }
  std::vector<Message> out;
  for (size_t i = 0; i < messages->size(); ++i) {
    const nlohmann::json& message = (*messages)[i];
    const std::string where = list_field + "[" + std::to_string(i) + "]";
    if (!message.is_object()) {
      reader.fail(std::string("expected a message object, found ") + message.type_name(), where);
    }
    const auto role_it = message.find(role_key);
    if (role_it == message.end()) reader.fail("missing field", where + "." + role_key);
    const std::string raw_role = reader.string_of(*role_it, where + "." + role_key);
    const auto content_it = message.find(content_key);
    if (content_it == message.end()) reader.fail("missing field", where + "." + content_key);
    const std::string content = reader.string_of(*content_it, where + "." + content_key);
    const std::string role = canonical_role(raw_role);
    if (role.empty()) {
      reader.fail("unknown role '" + raw_role +
                      "'; expected system, user or assistant (ShareGPT: human, gpt)",
                  where + "." + role_key);
    }
    out.push_back({role, content, where + "." + role_key});
  }
  return out;
}

std::vector<PromptParts> format_header_chat(const FieldReader& reader,
                                            const std::vector<Message>& messages,
                                            const ChatTemplate& chat) {
  std::vector<PromptParts> turns;
  std::string pending_prompt;
  for (const Message& message : messages) {
    const std::string content = chat.trim_content ? trim(message.content) : message.content;
    if (message.role == "assistant") {
      turns.push_back({pending_prompt + chat.header(message.role), content + chat.footer});
      pending_prompt.clear();
    } else {
      pending_prompt += chat.header(message.role) + content + chat.footer;
    }
  }
  return turns;
}

// llama2: "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>" and
// mistral: "<s>[INST] {user} [/INST]{assistant}</s>", contents trimmed for llama2 as its Jinja
// template does. The sample's first <s> is the tokenizer's BOS; later ones are bos_before_prompt.
std::vector<PromptParts> format_inst_chat(const FieldReader& reader,
                                          const std::vector<Message>& messages,
                                          const std::string& name) {
  const bool llama2 = name == "llama2";
  size_t first = 0;
  std::string system;
  if (messages[0].role == "system") {
    if (!llama2) {
      reader.fail("the mistral template has no system role (use llama2, chatml or llama3)",
                  messages[0].where);
    }
    system = messages[0].content;
    first = 1;
  }
  std::vector<PromptParts> turns;
  std::string pending_user;
  for (size_t i = first; i < messages.size(); ++i) {
    const Message& message = messages[i];
    const bool expect_user = (i - first) % 2 == 0;
    if (message.role != (expect_user ? "user" : "assistant")) {
      reader.fail("the " + name + " template needs user and assistant messages to alternate, " +
                      "starting with user (a system message may come first" +
                      (llama2 ? "" : " only for llama2") + "); found " + message.role,
                  message.where);
    }
    if (expect_user) {
      std::string user = llama2 ? trim(message.content) : message.content;
      if (i == first && !system.empty()) {
        user = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + user;
      }
      pending_user = "[INST] " + user + " [/INST]";
      continue;
    }
    PromptParts turn;
    turn.prompt = pending_user;
    turn.response = llama2 ? " " + trim(message.content) + " " : message.content;
    turn.bos_before_prompt = llama2 && !turns.empty();
    turn.eos_after_response = true;
    turns.push_back(std::move(turn));
  }
  return turns;
}

const char* const kJinjaPrefix = "jinja:";

// Templates compiled once per tokenizer_config.json, shared by every record (and thread).
std::shared_ptr<const JinjaChatTemplate> jinja_template(const std::string& name) {
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<const JinjaChatTemplate>> cache;
  const std::string path = name.substr(std::string(kJinjaPrefix).size());
  const std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[path];
  if (!entry) entry = JinjaChatTemplate::from_tokenizer_config(path);
  return entry;
}

std::vector<PromptParts> format_jinja_chat(const FieldReader& reader,
                                           const std::vector<Message>& messages,
                                           const std::string& name) {
  const auto chat = jinja_template(name);
  std::vector<ChatMessage> plain;
  for (const Message& message : messages) plain.push_back({message.role, message.content});
  try {
    return chat_turns_of(chat->render_for_training(plain), chat->special_token("bos_token"),
                         chat->special_token("eos_token"));
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kFormat) throw;
    reader.fail(e.message(), reader.name(reader.find("messages") || !reader.find("conversations")
                                             ? "messages"
                                             : "conversations"));
  }
}

std::vector<PromptParts> format_chat(const FieldReader& reader, const std::string& name) {
  const std::vector<Message> messages = read_messages(reader);
  std::vector<PromptParts> turns;
  if (is_jinja_chat_template(name)) {
    turns = format_jinja_chat(reader, messages, name);
  } else if (const ChatTemplate* chat = find_chat_template(name)) {
    turns = format_header_chat(reader, messages, *chat);
  } else {
    turns = format_inst_chat(reader, messages, name);
  }
  if (turns.empty()) {
    reader.fail(
        "conversation has no assistant message",
        reader.name(reader.find("messages") || !reader.find("conversations") ? "messages"
                                                                             : "conversations"));
  }
  return turns;
}

}  // namespace

const std::vector<std::string>& prompt_formats() {
  static const std::vector<std::string> formats = {"alpaca", "completion", "text", "chat"};
  return formats;
}

const std::vector<std::string>& chat_templates() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& entry : chat_template_table()) out.push_back(entry.name);
    out.push_back("llama2");
    out.push_back("mistral");
    return out;
  }();
  return names;
}

const std::vector<std::string>& prompt_format_fields(const std::string& format) {
  static const std::map<std::string, std::vector<std::string>> fields = {
      {"alpaca", {"instruction", "input", "output"}},
      {"completion", {"prompt", "completion"}},
      {"text", {"text"}},
      {"chat", {"messages", "conversations", "role", "content", "from", "value"}},
  };
  const auto it = fields.find(format);
  if (it == fields.end()) {
    throw_error(ErrorKind::kConfig,
                "unknown dataset format '" + format + "'; known: " + join(prompt_formats()));
  }
  return it->second;
}

void check_prompt_format(const std::string& format, const FieldMap& fields,
                         const std::string& chat_template) {
  const auto& canonical = prompt_format_fields(format);
  for (const auto& [name, renamed] : fields) {
    if (!contains(canonical, name)) {
      throw_error(ErrorKind::kConfig, "format '" + format + "' has no field '" + name +
                                          "' to rename; its fields: " + join(canonical));
    }
  }
  if (format == "chat" && is_jinja_chat_template(chat_template)) {
    jinja_template(chat_template);  // parse errors now, not at the first record
  } else if (format == "chat") {
    find_chat_template(chat_template);
  }
}

bool is_jinja_chat_template(const std::string& name) {
  return name.rfind(kJinjaPrefix, 0) == 0;
}

std::string model_chat_template_name(const std::string& jinja, const std::string& source) {
  if (jinja_engine_available()) return kJinjaPrefix + source;
  try {
    return recognize_chat_template(jinja, source);
  } catch (const Error& e) {
    throw Error(e.kind(),
                e.message() +
                    " (this qtrain was built without the Jinja engine that renders any "
                    "template: scripts/fetch_jinja.sh, then reconfigure)",
                e.context());
  }
}

std::string recognize_chat_template(const std::string& jinja, const std::string& source) {
  auto has = [&](const char* marker) { return jinja.find(marker) != std::string::npos; };
  if (has("<|im_start|>") && has("<|im_end|>")) return "chatml";
  if (has("<|start_header_id|>") && has("<|eot_id|>")) return "llama3";
  if (has("[INST]") && has("<<SYS>>")) return "llama2";
  if (has("[INST]") && !has("[AVAILABLE_TOOLS]") && !has("[SYSTEM_PROMPT]")) return "mistral";
  throw_error(ErrorKind::kUnsupported,
              "the model's chat_template is none of the shapes qtrain renders exactly (" +
                  join(chat_templates()) +
                  "); set data.template to the one the model was "
                  "trained with",
              {.file = source, .field = "chat_template"});
}

std::vector<PromptParts> format_record(const Record& record, const std::string& format,
                                       const FieldMap& fields, const std::string& chat_template) {
  const FieldReader reader(record, fields);
  if (format == "alpaca") return format_alpaca(reader);
  if (format == "completion") {
    return {{reader.required_string("prompt"), reader.required_string("completion")}};
  }
  if (format == "text") return {{"", reader.required_string("text")}};
  if (format == "chat") return format_chat(reader, chat_template);
  prompt_format_fields(format);  // throws the unknown-format error
  throw_error(ErrorKind::kInternal, "format '" + format + "' has no formatter");
}

}  // namespace qtrain

#include "data/prompt_format.h"

#include "core/error.h"

#include <algorithm>

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

struct ChatTemplate {
  std::string name;
  std::string (*header)(const std::string& role);
  std::string footer;
};

std::string chatml_header(const std::string& role) {
  return "<|im_start|>" + role + "\n";
}

const std::vector<ChatTemplate>& chat_template_table() {
  static const std::vector<ChatTemplate> table = {{"chatml", chatml_header, "<|im_end|>\n"}};
  return table;
}

const ChatTemplate& find_chat_template(const std::string& name) {
  for (const auto& entry : chat_template_table()) {
    if (entry.name == name) return entry;
  }
  throw_error(ErrorKind::kConfig,
              "unknown chat template '" + name + "'; known: " + join(chat_templates()));
}

std::string canonical_role(const std::string& role) {
  if (role == "system" || role == "user" || role == "assistant") return role;
  if (role == "human") return "user";
  if (role == "gpt") return "assistant";
  return "";
}

std::vector<PromptParts> format_chat(const FieldReader& reader, const ChatTemplate& chat) {
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
  std::vector<PromptParts> turns;
  std::string pending_prompt;
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
    if (role == "assistant") {
      turns.push_back({pending_prompt + chat.header(role), content + chat.footer});
      pending_prompt.clear();
    } else {
      pending_prompt += chat.header(role) + content + chat.footer;
    }
  }
  if (turns.empty()) reader.fail("conversation has no assistant message", list_field);
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
  if (format == "chat") find_chat_template(chat_template);
}

std::vector<PromptParts> format_record(const Record& record, const std::string& format,
                                       const FieldMap& fields, const std::string& chat_template) {
  const FieldReader reader(record, fields);
  if (format == "alpaca") return format_alpaca(reader);
  if (format == "completion") {
    return {{reader.required_string("prompt"), reader.required_string("completion")}};
  }
  if (format == "text") return {{"", reader.required_string("text")}};
  if (format == "chat") return format_chat(reader, find_chat_template(chat_template));
  prompt_format_fields(format);  // throws the unknown-format error
  throw_error(ErrorKind::kInternal, "format '" + format + "' has no formatter");
}

}  // namespace qtrain

// Prompt formats: the exact rendered text of each format and template, field renames, and the
// errors for records that do not fit (file, line and field named).
#include "core/error.h"
#include "data/prompt_format.h"

#include <gtest/gtest.h>

namespace qtrain {
namespace {

Record record(const std::string& json, int64_t line = 7) {
  return {nlohmann::json::parse(json), "data.jsonl", line};
}

std::string full_text(const std::vector<PromptParts>& turns) {
  std::string text;
  for (const auto& turn : turns) text += turn.prompt + turn.response;
  return text;
}

TEST(PromptFormat, AlpacaWithInputIsTheStanfordTemplate) {
  const auto turns = format_record(
      record(R"({"instruction": "Reverse the words.", "input": "a b c", "output": "c b a"})"),
      "alpaca");
  ASSERT_EQ(turns.size(), 1u);
  EXPECT_EQ(turns[0].prompt,
            "Below is an instruction that describes a task, paired with an input that provides "
            "further context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nReverse the words.\n\n### Input:\na b c\n\n### Response:\n");
  EXPECT_EQ(turns[0].response, "c b a");
}

TEST(PromptFormat, AlpacaWithoutInputUsesTheShortTemplate) {
  const std::string expected_prompt =
      "Below is an instruction that describes a task. Write a response that appropriately "
      "completes the request.\n\n### Instruction:\nWhat comes after Monday?\n\n### Response:\n";
  for (const char* json : {R"({"instruction": "What comes after Monday?", "output": "Tuesday"})",
                           R"({"instruction": "What comes after Monday?", "input": "",
                               "output": "Tuesday"})",
                           R"({"instruction": "What comes after Monday?", "input": null,
                               "output": "Tuesday"})"}) {
    const auto turns = format_record(record(json), "alpaca");
    ASSERT_EQ(turns.size(), 1u);
    EXPECT_EQ(turns[0].prompt, expected_prompt) << json;
    EXPECT_EQ(turns[0].response, "Tuesday");
  }
}

TEST(PromptFormat, TemplateLookalikesInFieldsStayLiteral) {
  const auto turns =
      format_record(record(R"({"instruction": "say {input}", "input": "{instruction}",
                               "output": "x"})"),
                    "alpaca");
  EXPECT_NE(turns[0].prompt.find("### Instruction:\nsay {input}\n\n### Input:\n{instruction}\n"),
            std::string::npos);
}

TEST(PromptFormat, CompletionAndTextHaveNoTemplate) {
  auto turns = format_record(record(R"({"prompt": "2 + 2 =", "completion": " 4"})"), "completion");
  ASSERT_EQ(turns.size(), 1u);
  EXPECT_EQ(turns[0].prompt, "2 + 2 =");
  EXPECT_EQ(turns[0].response, " 4");
  turns = format_record(record(R"({"text": "All of it is learned."})"), "text");
  ASSERT_EQ(turns.size(), 1u);
  EXPECT_EQ(turns[0].prompt, "");
  EXPECT_EQ(turns[0].response, "All of it is learned.");
}

TEST(PromptFormat, ChatMultiTurnSplitsAtEveryAssistantMessage) {
  const auto turns = format_record(record(R"({"messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"},
      {"role": "user", "content": "Day after Monday?"},
      {"role": "assistant", "content": "Tuesday."},
      {"role": "user", "content": "ignored: nothing answers it"}]})"),
                                   "chat");
  ASSERT_EQ(turns.size(), 2u);
  EXPECT_EQ(turns[0].prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(turns[0].response, "Hello!<|im_end|>\n");
  EXPECT_EQ(turns[1].prompt,
            "<|im_start|>user\nDay after Monday?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(turns[1].response, "Tuesday.<|im_end|>\n");
}

TEST(PromptFormat, ShareGptConversationsMapHumanAndGpt) {
  const auto sharegpt = format_record(record(R"({"conversations": [
      {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]})"),
                                      "chat");
  const auto openai = format_record(record(R"({"messages": [
      {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})"),
                                    "chat");
  EXPECT_EQ(full_text(sharegpt),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n");
  EXPECT_EQ(full_text(sharegpt), full_text(openai));
}

TEST(PromptFormat, FieldRenames) {
  auto turns = format_record(record(R"({"question": "Q?", "answer": "A."})"), "alpaca",
                             {{"instruction", "question"}, {"output", "answer"}});
  EXPECT_EQ(turns[0].response, "A.");
  EXPECT_NE(turns[0].prompt.find("### Instruction:\nQ?\n"), std::string::npos);
  turns = format_record(record(R"({"dialog": [{"speaker": "user", "text": "Hi"},
                                              {"speaker": "assistant", "text": "Yo"}]})"),
                        "chat", {{"messages", "dialog"}, {"role", "speaker"}, {"content", "text"}});
  EXPECT_EQ(turns[0].response, "Yo<|im_end|>\n");
}

struct BadRecord {
  std::string format;
  std::string json;
  std::string expected;  // substring of the message
};

TEST(PromptFormat, RecordsThatDoNotFitNameFileLineAndField) {
  const std::vector<BadRecord> cases = {
      {"alpaca", R"({"instruction": "x"})", "data.jsonl:7: field 'output': missing field"},
      {"alpaca", R"({"instruction": 3, "output": "y"})",
       "data.jsonl:7: field 'instruction': expected a string, found number"},
      {"completion", R"({"prompt": "x"})", "field 'completion': missing field"},
      {"text", R"({"content": "x"})", "data.jsonl:7: field 'text': missing field"},
      {"chat", R"({"messages": []})", "field 'messages': expected a non-empty list"},
      {"chat", R"({"other": 1})", "field 'messages': missing field"},
      {"chat", R"({"messages": [{"role": "bot", "content": "x"}]})",
       "data.jsonl:7: field 'messages[0].role': unknown role 'bot'"},
      {"chat", R"({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt"}]})",
       "field 'conversations[1].value': missing field"},
      {"chat", R"({"messages": [{"role": "user", "content": "x"}]})",
       "conversation has no assistant message"},
      {"chat", R"({"messages": ["hello"]})", "field 'messages[0]': expected a message object"},
  };
  for (const auto& c : cases) {
    try {
      format_record(record(c.json), c.format);
      ADD_FAILURE() << "no error for " << c.json;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFormat) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos)
          << e.what() << "\nexpected: " << c.expected;
      EXPECT_EQ(e.context().line, 7);
    }
  }
}

TEST(PromptFormat, UnknownFormatTemplateOrRenameIsAConfigErrorListingTheKnownOnes) {
  auto expect_config = [](const std::function<void()>& f, const std::string& expected) {
    try {
      f();
      ADD_FAILURE() << "no error, expected " << expected;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  expect_config([] { format_record(record(R"({"text": "x"})"), "sharegpt"); },
                "unknown dataset format 'sharegpt'; known: alpaca, completion, text, chat");
  expect_config([] { check_prompt_format("chat", {}, "llama9"); },
                "unknown chat template 'llama9'; known: chatml");
  expect_config(
      [] {
        check_prompt_format("alpaca", {{"instrction", "q"}});
      },
      "no field 'instrction' to rename; its fields: instruction, input, output");
  EXPECT_NO_THROW(check_prompt_format("alpaca", {{"instruction", "q"}}, "not-used-by-alpaca"));
}

}  // namespace
}  // namespace qtrain

// Which tokens carry loss under every prompt format and chat template (shown with the data-check
// renderer), recognising a model's own chat template, and `qtrain data-check` through the binary.
#include "core/error.h"
#include "data/byte_level.h"
#include "data/examples.h"
#include "data/sentencepiece_trainer.h"
#include "data/tiny_instruct.h"
#include "data/tokenizer.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"
#include "trainer/data_check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>

namespace qtrain {
namespace {

namespace fs = std::filesystem;

class LossMask : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::ScratchDir("qtrain-loss-mask");
    fs::create_directory(dir_->file("model"));
    train_sentencepiece(default_tokenizer_corpus(), 512, dir_->file("model/tokenizer.model"));
    tokenizer_ = load_tokenizer(dir_->file("model")).release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete dir_;
  }

  static std::string render(const std::string& json, const std::string& format,
                            const std::string& chat_template = "chatml") {
    ExampleOptions options;
    options.chat_template = chat_template;
    const std::vector<Record> records = {{nlohmann::json::parse(json), "d.jsonl", 1}};
    const auto examples = build_examples(records, format, {}, *tokenizer_, options);
    return render_loss_mask(examples.at(0), *tokenizer_);
  }

  static testing::ScratchDir* dir_;
  static Tokenizer* tokenizer_;
};

testing::ScratchDir* LossMask::dir_ = nullptr;
Tokenizer* LossMask::tokenizer_ = nullptr;

const char* const kConversation = R"({"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a day."},
    {"role": "assistant", "content": "Monday"},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Friday"}]})";

TEST_F(LossMask, AlpacaCompletionAndText) {
  EXPECT_EQ(render(R"({"instruction": "Name a day.", "input": "", "output": "Monday"})", "alpaca"),
            "<bos>Below is an instruction that describes a task. Write a response that "
            "appropriately completes the request.\n\n### Instruction:\nName a day.\n\n"
            "### Response:\n[[Monday<eos>]]");
  EXPECT_EQ(render(R"({"prompt": "The first day is", "completion": " Monday"})", "completion"),
            "<bos>The first day is[[Monday<eos>]]");  // a run's leading space decodes away
  EXPECT_EQ(render(R"({"text": "Monday Friday"})", "text"), "<bos>[[Monday Friday<eos>]]");
}

TEST_F(LossMask, ChatTemplatesLearnOnlyTheAssistantTurns) {
  EXPECT_EQ(render(kConversation, "chat", "chatml"),
            "<bos><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a "
            "day.<|im_end|>\n<|im_start|>assistant\n[[Monday<|im_end|>\n]]<|im_start|>user\n"
            "Another?<|im_end|>\n<|im_start|>assistant\n[[Friday<|im_end|>\n<eos>]]");
  EXPECT_EQ(render(kConversation, "chat", "llama3"),
            "<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nName a day.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n[[Monday<|eot_id|>]]"
            "<|start_header_id|>user<|end_header_id|>\n\nAnother?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n[[Friday<|eot_id|><eos>]]");
  // [INST] templates: every exchange ends in </s> with loss; llama2 opens the later ones with
  // <s> and folds the system message into the first.
  EXPECT_EQ(render(kConversation, "chat", "llama2"),
            "<bos>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nName a day. [/INST][[Monday <eos>]]"
            "<bos>[INST] Another? [/INST][[Friday <eos>]]");
  EXPECT_EQ(render(R"({"messages": [{"role": "user", "content": "Name a day."},
      {"role": "assistant", "content": "Monday"}, {"role": "user", "content": "Another?"},
      {"role": "assistant", "content": "Friday"}]})",
                   "chat", "mistral"),
            "<bos>[INST] Name a day. [/INST][[Monday<eos>]][INST] Another? [/INST][[Friday<eos>]]");
}

TEST_F(LossMask, InstTemplatesRejectWhatTheyCannotRender) {
  auto kind_of = [&](const std::string& json, const std::string& name) {
    try {
      render(json, "chat", name);
    } catch (const Error& e) {
      EXPECT_EQ(e.context().line, 1) << e.what();
      return e.kind();
    }
    return ErrorKind::kInternal;
  };
  EXPECT_EQ(kind_of(kConversation, "mistral"), ErrorKind::kFormat);  // no system role
  EXPECT_EQ(kind_of(R"({"messages": [{"role": "user", "content": "a"},
      {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]})",
                    "llama2"),
            ErrorKind::kFormat);  // not alternating
}

TEST(ChatTemplate, RecognisesTheKnownShapesOfModelTemplates) {
  // Abridged from the models' tokenizer_config.json chat_template strings.
  const std::string qwen =
      "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content "
      "+ '<|im_end|>' + '\\n' }}{%- endfor %}";
  const std::string llama3 =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
      "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
      "message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}";
  const std::string llama2 =
      "{% if messages[0]['role'] == 'system' %}{% set system_message = '<<SYS>>\\n' + "
      "messages[0]['content'] | trim + '\\n<</SYS>>\\n\\n' %}{% endif %}{{ bos_token + '[INST] ' "
      "+ content | trim + ' [/INST]' }}";
  const std::string mistral =
      "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' "
      "+ message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token}}{% endif "
      "%}{% endfor %}";
  EXPECT_EQ(recognize_chat_template(qwen, "q"), "chatml");
  EXPECT_EQ(recognize_chat_template(llama3, "l3"), "llama3");
  EXPECT_EQ(recognize_chat_template(llama2, "l2"), "llama2");
  EXPECT_EQ(recognize_chat_template(mistral, "m"), "mistral");
  const std::string gemma =
      "{% for message in messages %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | "
      "trim + '<end_of_turn>\\n' }}{% endfor %}";
  try {
    recognize_chat_template(gemma, "gemma/tokenizer_config.json");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_EQ(e.context().file, "gemma/tokenizer_config.json");
  }
}

TEST(LengthSummary, OrderStatistics) {
  const LengthSummary s = summarize_lengths({5, 1, 9, 3, 7, 2, 8, 4, 6, 10});
  EXPECT_EQ(s.min, 1);
  EXPECT_EQ(s.median, 5);  // rank floor(0.5 * 9) = 4 of 1..10
  EXPECT_EQ(s.p95, 9);     // rank floor(0.95 * 9) = 8
  EXPECT_EQ(s.max, 10);
  EXPECT_DOUBLE_EQ(s.mean, 5.5);
}

class DataCheckCli : public ::testing::Test {
 protected:
  int run(const std::string& args, std::string* out) {
    const std::string command = "QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache " +
                                testing::binary_dir() + "/tools/qtrain data-check " +
                                dir_.file("recipe.yaml") + " " + args;
    return testing::run_command(command, out);
  }
  void SetUp() override {
    write_tiny_instruct_dataset(dir_.file("data.jsonl"), 200, 3);
    testing::write_file(dir_.file("recipe.yaml"),
                        "model:\n  path: builtin:micro\n"
                        "data:\n  path: " +
                            dir_.file("data.jsonl") +
                            "\n  eval_fraction: 0.1\n"
                            "output:\n  dir: " +
                            dir_.file("run") + "\n");
  }
  testing::ScratchDir dir_{"qtrain-data-check"};
};

TEST_F(DataCheckCli, ReportsCountsAndWritesNothing) {
  std::string out;
  ASSERT_EQ(run("", &out), 0) << out;
  EXPECT_NE(out.find("examples: 200 kept, 0 truncated, 0 dropped"), std::string::npos) << out;
  EXPECT_NE(out.find("split: 180 train, 20 held out"), std::string::npos) << out;
  EXPECT_NE(out.find("[["), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir_.file("run"))) << "data-check must not start a run";

  // Every sample is longer than 8 tokens: all truncated (the prompt fills the window, so only
  // train_on_inputs leaves loss), or all dropped, and then nothing is left to train on.
  ASSERT_EQ(run("data.max_seq_len=8 data.train_on_inputs=true", &out), 0) << out;
  EXPECT_NE(out.find("examples: 200 kept, 200 truncated"), std::string::npos) << out;
  EXPECT_EQ(run("data.max_seq_len=8 data.overlong=drop", &out), 3) << out;
  EXPECT_NE(out.find("max_seq_len"), std::string::npos) << out;
}

TEST_F(DataCheckCli, BadDataNamesTheFileAndLine) {
  std::string out;
  testing::write_file(dir_.file("bad.jsonl"),
                      "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \n");
  EXPECT_EQ(run("data.path=" + dir_.file("bad.jsonl"), &out), 5) << out;
  EXPECT_NE(out.find("bad.jsonl:2"), std::string::npos) << out;
  EXPECT_EQ(run("data.path=" + dir_.file("missing.jsonl"), &out), 4) << out;
  EXPECT_NE(out.find("missing.jsonl"), std::string::npos) << out;
  // The built-in model has no chat template to follow.
  EXPECT_NE(run("data.format=chat data.template=auto", &out), 0) << out;
  EXPECT_NE(out.find("tokenizer_config.json"), std::string::npos) << out;
}

// A model directory with a config.json and a byte-level BPE tokenizer.json (no merges) holding
// chatml's template tokens, and no weights: data-check loads none.
void write_chatml_tokenizer_dir(const std::string& dir) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_chars()[b]] = b;
  nlohmann::json added = nlohmann::json::array();
  for (const char* token : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    added.push_back(
        {{"id", 256 + added.size()}, {"content", token}, {"special", true}, {"normalized", false}});
  }
  const nlohmann::json tokenizer = {
      {"added_tokens", added},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  fs::create_directories(dir);
  testing::write_file(dir + "/config.json", tiny_model_config("qwen2", "micro").to_json().dump());
  testing::write_file(dir + "/tokenizer.json", tokenizer.dump());
  testing::write_file(dir + "/tokenizer_config.json",
                      R"({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})");
}

// Issue 24: a chatml conversation is one text run (its template tokens are text), and masking it
// re-encoded the text up to every turn: 1,000 exchanges took 31 s, 3,000 over 900 s. The
// template tokens now cut the run, so this record checks in a moment (bench_tokenizer's
// BM_ChatmlConversation times it).
TEST_F(DataCheckCli, LongChatmlConversationIsChecked) {
  write_chatml_tokenizer_dir(dir_.file("bpe"));
  nlohmann::json messages = nlohmann::json::array();
  for (int t = 0; t < 3000; ++t) {
    messages.push_back({{"role", "user"}, {"content", "Question " + std::to_string(t) + "?"}});
    messages.push_back({{"role", "assistant"}, {"content", "Answer " + std::to_string(t) + "."}});
  }
  const nlohmann::json short_chat = {
      {"messages",
       {{{"role", "user"}, {"content", "Hi?"}}, {{"role", "assistant"}, {"content", "Hello."}}}}};
  testing::write_file(dir_.file("chat.jsonl"), nlohmann::json{{"messages", messages}}.dump() +
                                                   "\n" + short_chat.dump() + "\n");
  std::string out;
  ASSERT_EQ(run("model.path=" + dir_.file("bpe") + " data.path=" + dir_.file("chat.jsonl") +
                    " data.format=chat data.template=chatml data.max_seq_len=4096 "
                    "data.eval_fraction=0",
                &out),
            0)
      << out;
  EXPECT_NE(out.find("examples: 2 kept, 1 truncated, 0 dropped, 0 bad records skipped"),
            std::string::npos)
      << out;
  // <|im_start|> decodes to nothing, <|im_end|> is the EOS: the first response is learnt.
  EXPECT_NE(out.find("user\nQuestion 0?<eos>\nassistant\n[[Answer 0.<eos>\n]]user\nQuestion 1?"),
            std::string::npos)
      << out.substr(0, 2000);
}

// data.max_record_bytes: a longer record is a bad record, named, and with skip_bad_lines counted.
TEST_F(DataCheckCli, OverLongRecordIsABadRecord) {
  const std::string good = R"({"instruction": "Name a day.", "output": "Monday"})";
  const std::string long_record =
      R"({"instruction": "Name a day.", "output": ")" + std::string(300, 'x') + "\"}";
  testing::write_file(dir_.file("long.jsonl"),
                      good + "\n" + good + "\n" + long_record + "\n" + good + "\n");
  const std::string args =
      "data.path=" + dir_.file("long.jsonl") + " data.max_record_bytes=200 data.eval_fraction=0";
  std::string out;
  EXPECT_EQ(run(args, &out), 5) << out;
  EXPECT_NE(out.find("long.jsonl:3: record is 344 bytes, more than data.max_record_bytes = 200"),
            std::string::npos)
      << out;
  ASSERT_EQ(run(args + " data.skip_bad_lines=true", &out), 0) << out;
  EXPECT_NE(out.find("examples: 3 kept, 0 truncated, 0 dropped, 1 bad records skipped"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("long.jsonl:3: record is 344 bytes"), std::string::npos) << out;
}

}  // namespace
}  // namespace qtrain

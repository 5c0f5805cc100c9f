// Records -> token ids and loss labels with a real SentencePiece tokenizer: exactly which tokens
// carry loss (checked by decoding the labelled spans), truncation and drop counts, and the
// tokenizer loader.
#include "core/error.h"
#include "data/examples.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/sentencepiece_trainer.h"
#include "data/tokenizer.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;
using testing::write_file;

std::vector<std::string> license_corpus() {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator("/usr/share/common-licenses")) {
    if (entry.is_regular_file() && !entry.is_symlink()) files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// One Llama-style tokenizer (BOS 1, EOS 2, no pad) for the whole suite.
class ExamplesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("qtrain-examples");
    fs::create_directory(dir_->file("model"));
    train_sentencepiece(license_corpus(), 512, dir_->file("model/tokenizer.model"));
    tokenizer_ = load_tokenizer(dir_->file("model")).release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete dir_;
  }
  static const Tokenizer& tok() { return *tokenizer_; }

  // The decoded text of each maximal run of positions that carry loss.
  static std::vector<std::string> labelled_spans(const Example& example) {
    std::vector<std::string> spans;
    std::vector<int64_t> run;
    for (size_t i = 0; i <= example.ids.size(); ++i) {
      const bool labelled = i < example.ids.size() && example.labels[i] != kIgnoreLabel;
      if (labelled) {
        EXPECT_EQ(example.labels[i], example.ids[i]) << "a label must be its own token";
        run.push_back(example.ids[i]);
      } else if (!run.empty()) {
        spans.push_back(tok().decode(run));
        run.clear();
      }
    }
    return spans;
  }
  static std::vector<int64_t> concat(std::initializer_list<std::vector<int64_t>> parts) {
    std::vector<int64_t> out;
    for (const auto& part : parts) out.insert(out.end(), part.begin(), part.end());
    return out;
  }
  static std::vector<int64_t> encode(const std::string& text) {
    return tok().encode(text, false, false);
  }
  static Example build_one(const std::string& json, const std::string& format,
                           ExampleOptions options = {}) {
    const std::vector<Record> records = {{nlohmann::json::parse(json), "d.jsonl", 1}};
    const auto examples = build_examples(records, format, {}, tok(), options);
    EXPECT_EQ(examples.size(), 1u);
    return examples.at(0);
  }

  static ScratchDir* dir_;
  static Tokenizer* tokenizer_;
};

ScratchDir* ExamplesTest::dir_ = nullptr;
Tokenizer* ExamplesTest::tokenizer_ = nullptr;

const char* const kAlpacaIntroWithInput =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n";

TEST_F(ExamplesTest, AlpacaWithInputLearnsOnlyTheOutputAndEos) {
  const Example example =
      build_one(R"({"instruction": "Reverse the words.", "input": "red fox", "output": "fox red"})",
                "alpaca");
  const std::string prompt = std::string(kAlpacaIntroWithInput) +
                             "### Instruction:\nReverse the words.\n\n### Input:\nred fox\n\n"
                             "### Response:\n";
  // The whole text is tokenized at once, as a served model sees it.
  EXPECT_EQ(example.ids, concat({{tok().bos_id()}, encode(prompt + "fox red"), {tok().eos_id()}}));
  EXPECT_EQ(labelled_spans(example), std::vector<std::string>{"fox red"});
  EXPECT_EQ(example.labels.back(), tok().eos_id());
  EXPECT_EQ(example.labels.front(), kIgnoreLabel);  // BOS
  const size_t response_start = 1 + encode(prompt).size();
  for (size_t i = 0; i < response_start; ++i) ASSERT_EQ(example.labels[i], kIgnoreLabel) << i;
  for (size_t i = response_start; i < example.ids.size(); ++i)
    ASSERT_NE(example.labels[i], kIgnoreLabel);
}

TEST_F(ExamplesTest, AlpacaWithoutInput) {
  const Example example = build_one(R"({"instruction": "What day comes after Monday?", "input": "",
                    "output": "Tuesday"})",
                                    "alpaca");
  const std::string prompt =
      "Below is an instruction that describes a task. Write a response that appropriately "
      "completes the request.\n\n### Instruction:\nWhat day comes after Monday?\n\n"
      "### Response:\n";
  EXPECT_EQ(example.ids, concat({{tok().bos_id()}, encode(prompt + "Tuesday"), {tok().eos_id()}}));
  EXPECT_EQ(labelled_spans(example), std::vector<std::string>{"Tuesday"});
}

TEST_F(ExamplesTest, CompletionLearnsTheCompletion) {
  Example example = build_one(R"({"prompt": "The day after Monday is", "completion": " Tuesday."})",
                              "completion");
  EXPECT_EQ(labelled_spans(example), std::vector<std::string>{"Tuesday."});
  EXPECT_EQ(tok().decode(example.ids), "The day after Monday is Tuesday.");
  // The texts join as written: no space appears that the data does not have (tokenizing the
  // completion on its own would give it SentencePiece's dummy-prefix space).
  example =
      build_one(R"({"prompt": "The day after Monday is", "completion": "Tuesday."})", "completion");
  EXPECT_EQ(tok().decode(example.ids), "The day after Monday isTuesday.");
  EXPECT_EQ(
      example.ids,
      concat({{tok().bos_id()}, encode("The day after Monday isTuesday."), {tok().eos_id()}}));
}

TEST_F(ExamplesTest, TextLearnsEverythingButTheFirstToken) {
  Example example = build_one(R"({"text": "free software license"})", "text");
  EXPECT_EQ(example.ids,
            concat({{tok().bos_id()}, encode("free software license"), {tok().eos_id()}}));
  EXPECT_EQ(labelled_spans(example), std::vector<std::string>{"free software license"});
  ExampleOptions no_bos;
  no_bos.add_bos = false;
  example = build_one(R"({"text": "free software license"})", "text", no_bos);
  const auto text_ids = encode("free software license");
  EXPECT_EQ(example.ids, concat({text_ids, {tok().eos_id()}}));
  // Nothing in the sample predicts its first token, so it carries no loss.
  EXPECT_EQ(example.labels[0], kIgnoreLabel);
  EXPECT_EQ(labelled_spans(example),
            std::vector<std::string>{tok().decode({text_ids.begin() + 1, text_ids.end()})});
}

TEST_F(ExamplesTest, ChatMultiTurnLearnsOnlyAssistantTurns) {
  const Example example = build_one(R"({"messages": [
      {"role": "system", "content": "Answer briefly."},
      {"role": "user", "content": "What day comes after Monday?"},
      {"role": "assistant", "content": "Tuesday"},
      {"role": "user", "content": "And after that?"},
      {"role": "assistant", "content": "Wednesday"}]})",
                                    "chat");
  EXPECT_EQ(labelled_spans(example),
            (std::vector<std::string>{"Tuesday<|im_end|>\n", "Wednesday<|im_end|>\n"}));
  EXPECT_EQ(example.labels.back(), tok().eos_id());
  const std::string first_prompt =
      "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat day comes after "
      "Monday?<|im_end|>\n<|im_start|>assistant\n";
  const std::string second_prompt =
      "<|im_start|>user\nAnd after that?<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_EQ(example.ids, concat({{tok().bos_id()},
                                 encode(first_prompt + "Tuesday<|im_end|>\n" + second_prompt +
                                        "Wednesday<|im_end|>\n"),
                                 {tok().eos_id()}}));
}

TEST_F(ExamplesTest, TrainOnInputsLearnsPromptsToo) {
  ExampleOptions options;
  options.train_on_inputs = true;
  const Example example = build_one(
      R"({"prompt": "The day after Monday is", "completion": " Tuesday."})", "completion", options);
  EXPECT_EQ(example.labels[0], kIgnoreLabel);
  for (size_t i = 1; i < example.ids.size(); ++i) EXPECT_EQ(example.labels[i], example.ids[i]);
}

TEST_F(ExamplesTest, NoEosWhenAskedNot) {
  ExampleOptions options;
  options.add_eos = false;
  const Example example = build_one(R"({"prompt": "a", "completion": "b"})", "completion", options);
  EXPECT_EQ(example.ids, concat({{tok().bos_id()}, encode("ab")}));
}

TEST_F(ExamplesTest, TruncateAndDropCounts) {
  // Lengths with BOS and EOS: short fits in 12; long does not; the last one's prompt alone fills
  // the window, so truncation leaves nothing to learn and it is dropped.
  const std::string long_text = "free software license terms and conditions apply here";
  std::vector<Record> records = {
      {{{"prompt", "a"}, {"completion", "b"}}, "d.jsonl", 1},
      {{{"prompt", "a"}, {"completion", long_text}}, "d.jsonl", 2},
      {{{"prompt", long_text}, {"completion", "b"}}, "d.jsonl", 3},
  };
  const int64_t window = 12;
  ASSERT_LE(static_cast<int64_t>(2 + encode("a").size() + encode("b").size()), window);
  ASSERT_GT(static_cast<int64_t>(encode(long_text).size()), window);

  ExampleOptions options;
  options.max_seq_len = window;
  ExampleStats stats;
  auto examples = build_examples(records, "completion", {}, tok(), options, &stats);
  ASSERT_EQ(examples.size(), 2u);
  EXPECT_EQ(stats.samples, 2);
  EXPECT_EQ(stats.truncated, 1);  // record 3 was cut too, then dropped
  EXPECT_EQ(stats.dropped, 1);
  EXPECT_EQ(examples[1].ids.size(), static_cast<size_t>(window));
  EXPECT_NE(examples[1].labels.back(), kIgnoreLabel);
  EXPECT_EQ(stats.total_tokens, static_cast<int64_t>(examples[0].ids.size()) + window);
  int64_t loss = 0;
  for (const auto& e : examples) {
    loss += std::count_if(e.labels.begin(), e.labels.end(), [](int64_t l) { return l >= 0; });
  }
  EXPECT_EQ(stats.loss_tokens, loss);
  int64_t histogram_total = 0;
  for (int64_t count : stats.length_histogram) histogram_total += count;
  EXPECT_EQ(histogram_total, 2);
  EXPECT_EQ(stats.length_histogram.back(), 1);  // the truncated one has the full length

  options.overlong = "drop";
  examples = build_examples(records, "completion", {}, tok(), options, &stats);
  ASSERT_EQ(examples.size(), 1u);
  EXPECT_EQ(stats.dropped, 2);
  EXPECT_EQ(stats.truncated, 0);

  options.max_seq_len = 3;
  try {
    build_examples(records, "completion", {}, tok(), options, &stats);
    ADD_FAILURE() << "every sample was dropped, expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("max_seq_len too small"), std::string::npos) << e.what();
  }
}

TEST_F(ExamplesTest, LoadExamplesSkipsBadLinesAndRecordsWhenAsked) {
  const std::string path = dir_->file("mixed.jsonl");
  write_file(path,
             "{\"instruction\": \"a\", \"output\": \"b\"}\n"
             "{\"instruction\": \n"
             "{\"instruction\": \"a\"}\n"
             "{\"instruction\": \"c\", \"output\": \"d\"}\n");
  ExampleOptions options;
  try {
    load_examples(path, "alpaca", {}, tok(), options);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find(path + ":2: malformed JSON at column"), std::string::npos)
        << e.what();
  }
  options.skip_bad_lines = true;
  ExampleStats stats;
  const auto examples = load_examples(path, "alpaca", {}, tok(), options, &stats);
  EXPECT_EQ(examples.size(), 2u);
  EXPECT_EQ(stats.skipped_lines, 2);
  EXPECT_EQ(stats.samples, 2);
}

TEST_F(ExamplesTest, LoaderReadsSpecialTokenDefaults) {
  EXPECT_TRUE(tok().add_bos_default());
  EXPECT_FALSE(tok().add_eos_default());
  EXPECT_EQ(tok().vocab_size(), 512);
  EXPECT_EQ(tok().pad_id(), -1);
  EXPECT_EQ(padding_id(tok()), 0);

  const std::string dir = dir_->file("flags");
  fs::create_directory(dir);
  fs::copy_file(dir_->file("model/tokenizer.model"), dir + "/tokenizer.model");
  write_file(dir + "/tokenizer_config.json", R"({"add_bos_token": false, "add_eos_token": true})");
  auto flagged = load_tokenizer(dir);
  EXPECT_FALSE(flagged->add_bos_default());
  EXPECT_TRUE(flagged->add_eos_default());
  // The same ids as the SentencePiece wrapper used directly.
  const auto spm = SentencePieceTokenizer::load(dir + "/tokenizer.model");
  EXPECT_EQ(flagged->encode("free software", true, true), spm.encode("free software", true, true));

  write_file(dir + "/tokenizer_config.json", R"({"add_bos_token": "yes"})");
  try {
    load_tokenizer(dir);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_EQ(e.context().field, "add_bos_token");
  }
}

TEST_F(ExamplesTest, LoaderErrors) {
  const std::string hf_only = dir_->file("hf_only");
  fs::create_directory(hf_only);
  write_file(hf_only + "/tokenizer.json", "{}");
  try {
    load_tokenizer(hf_only);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    // A tokenizer.json-only directory is read as HF BPE; "{}" has no model in it.
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
  const std::string empty = dir_->file("empty");
  fs::create_directory(empty);
  try {
    load_tokenizer(empty);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_EQ(e.context().file, empty);
  }
}

}  // namespace
}  // namespace qtrain

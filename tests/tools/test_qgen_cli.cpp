// qgen end to end through the real binary: a model directory made by write_tiny_model, greedy
// output equal to the library's generate(), and clear errors with the documented exit codes.
#include "data/sentencepiece_tokenizer.h"
#include "models/generate.h"
#include "models/hf_loader.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

std::string qgen() {
  return t::binary_dir() + "/tools/qgen";
}

class QgenCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new t::ScratchDir("qtrain-qgen");
    write_tiny_model({.arch = "llama", .preset = "micro", .seed = 3}, model_dir());
  }
  static void TearDownTestSuite() { delete scratch_; }
  static std::string model_dir() { return scratch_->file("model"); }
  static t::ScratchDir* scratch_;
};
t::ScratchDir* QgenCliTest::scratch_ = nullptr;

TEST_F(QgenCliTest, GreedyOutputIsTheLibrarysContinuation) {
  std::string out;
  const std::string prompt = "Permission is hereby granted";
  int rc = t::run_command("{ " + qgen() + " '" + model_dir() + "' --prompt '" + prompt +
                              "' --max-new-tokens 12 2>/dev/null; }",
                          &out);
  ASSERT_EQ(rc, 0) << out;
  auto tokenizer = SentencePieceTokenizer::load(model_dir() + "/tokenizer.model");
  auto model = load_causal_lm(model_dir());
  auto ids = tokenizer.encode(prompt, /*add_bos=*/true);
  GenerateOptions greedy{.max_new_tokens = 12, .stop_ids = model->config().eos_token_ids};
  const std::string expected = prompt + tokenizer.decode(generate(*model, ids, greedy)) + "\n";
  EXPECT_EQ(out, expected);
}

TEST_F(QgenCliTest, SamplingIsReproducibleBySeed) {
  auto run = [&](int seed) {
    std::string out;
    const std::string cmd = "{ " + qgen() + " '" + model_dir() +
                            "' -p 'The' -n 16 -t 1.0 --top-p 0.9 --seed " + std::to_string(seed) +
                            " 2>/dev/null; }";
    EXPECT_EQ(t::run_command(cmd, &out), 0) << out;
    return out;
  };
  EXPECT_EQ(run(5), run(5));
  EXPECT_NE(run(5), run(6));
}

struct BadRun {
  std::string args;
  int exit_code;
  std::string message;
};

TEST_F(QgenCliTest, BadInputGivesClearErrorsAndExitCodes) {
  t::ScratchDir broken("qtrain-qgen-broken");
  t::run_command("cp -r '" + model_dir() + "/.' '" + broken.path() + "'", nullptr);
  t::write_file(broken.file("model.safetensors"), "not a safetensors file");
  const std::vector<BadRun> cases = {
      {"'" + model_dir() + "'", 2, "--prompt"},
      {"'" + model_dir() + "' -p x --top-p 2", 2, "top-p"},
      {"'" + model_dir() + "' -p x --dtype float8", 3, "float8"},
      {"/nonexistent/model -p x", 4, "/nonexistent/model"},
      {"'" + broken.path() + "' -p x", 5, "model.safetensors"},
      {"'" + model_dir() + "' -p x -n 5000", 2, "max_position_embeddings"},
  };
  for (const auto& c : cases) {
    std::string out;
    EXPECT_EQ(t::run_command(qgen() + " " + c.args, &out), c.exit_code) << c.args << "\n" << out;
    EXPECT_NE(out.find(c.message), std::string::npos) << c.args << "\n" << out;
  }
}

}  // namespace
}  // namespace qtrain

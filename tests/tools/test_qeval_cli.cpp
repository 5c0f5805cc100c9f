// qeval: the sliding-window perplexity against transformers computing the same windows, the
// single-window identity with the training loss, and the CLI's table, files and errors.
#include "data/tiny_instruct.h"
#include "data/tokenizer.h"
#include "models/hf_loader.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"
#include "trainer/causal_lm_loss.h"
#include "trainer/perplexity.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <sstream>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

std::string qeval() {
  return t::binary_dir() + "/tools/qeval";
}

class QevalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new t::ScratchDir("qtrain-qeval");
    write_tiny_model({.arch = "llama", .preset = "micro", .seed = 5}, model_dir());
    std::string text;
    for (int i = 0; i < 12; ++i) {
      text +=
          "Permission is hereby granted, free of charge, to any person obtaining a copy of "
          "this software, to deal in the Software without restriction. ";
    }
    t::write_file(scratch_->file("eval.txt"), text);
  }
  static void TearDownTestSuite() { delete scratch_; }
  static std::string model_dir() { return scratch_->file("model"); }
  static std::vector<int64_t> stream() {
    const auto tokenizer = load_tokenizer(model_dir());
    return evaluation_token_stream(scratch_->file("eval.txt"), *tokenizer);
  }
  static t::ScratchDir* scratch_;
};
t::ScratchDir* QevalTest::scratch_ = nullptr;

TEST_F(QevalTest, SlidingWindowMatchesTransformers) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  const std::vector<int64_t> ids = stream();
  ASSERT_GT(ids.size(), 150u);
  t::write_file(scratch_->file("ids.json"), nlohmann::json({{"ids", ids}}).dump());
  const auto model = load_causal_lm(model_dir(), {.dtype = at::kFloat});
  for (const auto& [max_len, stride] :
       std::vector<std::pair<int64_t, int64_t>>{{64, 16}, {64, 64}, {100, 37}}) {
    const PerplexityResult ours =
        sliding_window_perplexity(*model, ids, {.max_len = max_len, .stride = stride}, c10::kCPU);
    std::string out;
    ASSERT_EQ(t::run_reference_script("hf_perplexity.py",
                                      {model_dir(), scratch_->file("ids.json"),
                                       std::to_string(max_len), std::to_string(stride)},
                                      &out),
              0)
        << out;
    const auto ref = nlohmann::json::parse(out.substr(out.rfind('{')));
    EXPECT_EQ(ours.scored_tokens, ref["scored_tokens"].get<int64_t>());
    if (stride < max_len) {
      EXPECT_EQ(ours.scored_tokens, static_cast<int64_t>(ids.size()) - 1);
    }
    EXPECT_EQ(ours.windows, ref["windows"].get<int64_t>());
    EXPECT_NEAR(ours.mean_loss, ref["mean_loss"].get<double>(), 1e-5)
        << "max_len " << max_len << " stride " << stride;
  }
}

TEST_F(QevalTest, OneWindowIsTheMeanCausalLmLoss) {
  const std::vector<int64_t> ids = stream();
  const auto model = load_causal_lm(model_dir(), {.dtype = at::kFloat});
  const int64_t n = static_cast<int64_t>(ids.size());
  const PerplexityResult one =
      sliding_window_perplexity(*model, ids, {.max_len = n, .stride = n}, c10::kCPU);
  at::NoGradGuard no_grad;
  model->eval();
  const at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0);
  const double loss =
      causal_lm_loss_sum(model->forward({.input_ids = input}), input).item<double>();
  EXPECT_NEAR(one.mean_loss, loss / (n - 1), 1e-6);
  EXPECT_NEAR(one.perplexity, std::exp(one.mean_loss), 1e-9);
  // Disjoint windows: every window's first token has no context and is left out.
  const PerplexityResult short_windows =
      sliding_window_perplexity(*model, ids, {.max_len = 8, .stride = 8}, c10::kCPU);
  EXPECT_EQ(short_windows.scored_tokens, n - 1 - (n - 1) / 8);  // window starts go unscored
}

TEST_F(QevalTest, CompareWritesTheTableAsTextJsonAndCsv) {
  std::string out;
  const int rc = t::run_command(
      qeval() + " " + model_dir() + " --data " + scratch_->file("eval.txt") +
          " --compare bf16,int8,nf4,fp4 --max-len 64 --stride 32 --json " +
          scratch_->file("t.json") + " --csv " + scratch_->file("t.csv") + " 2>/dev/null",
      &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("precision"), std::string::npos) << out;
  const auto table = nlohmann::json::parse(t::read_file(scratch_->file("t.json")));
  ASSERT_EQ(table["rows"].size(), 4u);
  const std::vector<std::string> order = {"bf16", "int8", "nf4", "fp4"};
  for (size_t i = 0; i < order.size(); ++i) {
    const auto& row = table["rows"][i];
    EXPECT_EQ(row["precision"], order[i]);
    EXPECT_GT(row["perplexity"].get<double>(), 1.0);
    std::printf("%s: perplexity %.4f, weights %lld bytes\n", order[i].c_str(),
                row["perplexity"].get<double>(), row["weight_bytes"].get<long long>());
  }
  // Weight memory: bf16 > int8 > nf4 == fp4 (same 4-bit layout).
  EXPECT_GT(table["rows"][0]["weight_bytes"], table["rows"][1]["weight_bytes"]);
  EXPECT_GT(table["rows"][1]["weight_bytes"], table["rows"][2]["weight_bytes"]);
  EXPECT_EQ(table["rows"][2]["weight_bytes"], table["rows"][3]["weight_bytes"]);
  EXPECT_DOUBLE_EQ(table["rows"][0]["change_vs_first_percent"].get<double>(), 0.0);
  const std::string csv = t::read_file(scratch_->file("t.csv"));
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5) << csv;
  EXPECT_EQ(csv.rfind("precision,weight_bytes,perplexity", 0), 0u) << csv;
}

// --recipe evaluates the held-out split the way training does: on a finished run's adapter at the
// run's base precision it reproduces the run's own final eval loss.
TEST_F(QevalTest, RecipeHeldOutSplitReproducesTheRunsEvalLoss) {
  write_tiny_instruct_dataset(scratch_->file("data.jsonl"), 64, 9);
  const std::string run = scratch_->file("run");
  const std::string overrides =
      " model.path=builtin:micro data.path=" + scratch_->file("data.jsonl") +
      " data.max_seq_len=128 training.max_steps=4 training.warmup_steps=0 "
      "training.eval_every=0 output.save_every=0 output.dir=" +
      run;
  const std::string env = "QTRAIN_CACHE_DIR=" + t::binary_dir() + "/test-cache ";
  std::string out;
  ASSERT_EQ(t::run_command(env + t::binary_dir() + "/tools/qtrain " + t::source_dir() +
                               "/recipes/tiny_qlora.yaml" + overrides,
                           &out),
            0)
      << out;
  double run_loss = 0;
  std::istringstream metrics(t::read_file(run + "/metrics.jsonl"));
  for (std::string line; std::getline(metrics, line);) {
    const auto record = nlohmann::json::parse(line);
    if (record.contains("eval_loss")) run_loss = record["eval_loss"].get<double>();
  }
  ASSERT_GT(run_loss, 0.0);
  ASSERT_EQ(t::run_command(env + qeval() + " --recipe " + run + "/recipe.yaml --adapter " + run +
                               "/adapter --precision nf4 --json " + scratch_->file("r.json") +
                               " 2>/dev/null",
                           &out),
            0)
      << out;
  const auto table = nlohmann::json::parse(t::read_file(scratch_->file("r.json")));
  EXPECT_NEAR(table["rows"][0]["mean_loss"].get<double>(), run_loss, 1e-5);
}

TEST_F(QevalTest, BadInputsExitWithTheirCodes) {
  std::string out;
  EXPECT_EQ(
      t::run_command(qeval() + " " + model_dir() + " --data " + scratch_->file("none.txt"), &out),
      4)
      << out;
  EXPECT_NE(out.find("none.txt"), std::string::npos) << out;
  EXPECT_EQ(t::run_command(qeval() + " " + model_dir() + " --data " + scratch_->file("eval.txt") +
                               " --precision int3",
                           &out),
            2)
      << out;
  EXPECT_EQ(t::run_command(qeval() + " " + model_dir() + " --data " + scratch_->file("eval.txt") +
                               " --max-len 16 --stride 32",
                           &out),
            2)
      << out;
  EXPECT_EQ(t::run_command(qeval() + " " + model_dir(), &out), 2) << out;  // no --data/--recipe
  EXPECT_NE(out.find("--recipe"), std::string::npos) << out;
  t::write_file(scratch_->file("bad.jsonl"), "{\"text\": \"fine\"}\n{\"txt\": 3}\n");
  EXPECT_EQ(
      t::run_command(qeval() + " " + model_dir() + " --data " + scratch_->file("bad.jsonl"), &out),
      5)
      << out;
  EXPECT_NE(out.find("bad.jsonl:2"), std::string::npos) << out;
}

}  // namespace
}  // namespace qtrain

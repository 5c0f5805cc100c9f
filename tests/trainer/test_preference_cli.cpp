// Preference tuning through the real qtrain binary on the builtin micro model (NF4 base):
//  - DPO raises the held-out reward accuracy (0 at step 0, where policy and reference agree) and
//    logs rewards, margins and accuracy per step in metrics.jsonl;
//  - precomputed reference log-probabilities give the same losses as a reference pass per
//    micro-batch; a stopped and resumed run continues the same losses; two Gloo ranks equal one
//    process with twice the accumulation;
//  - ORPO lowers its loss; conversational pairs (chat template, implicit prompts) train;
//  - bad input is refused with the file, line or field: a pair without "rejected", DPO on
//    non-preference data, packing, preference data under sft, conversations without a template.
#include "tests/support/metrics_jsonl.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

namespace qtrain {
namespace {

// Pairs whose chosen answer follows one pattern and whose rejected answer is word salad.
void write_pairs(const std::string& path, int n) {
  const std::vector<std::string> words = {"apple", "river", "stone", "cloud", "green",
                                          "music", "paper", "light", "ocean", "tiger"};
  std::string text;
  for (int i = 0; i < n; ++i) {
    const std::string& w = words[i % words.size()];
    const std::string& a = words[(i * 7 + 3) % words.size()];
    const std::string& b = words[(i * 3 + 1) % words.size()];
    text += nlohmann::json{{"prompt", "Say something kind about " + w + "."},
                           {"chosen", " The " + w + " is lovely and bright."},
                           {"rejected", " " + a + " " + b + " no " + w}}
                .dump() +
            "\n";
  }
  testing::write_file(path, text);
}

class PreferenceCli : public ::testing::Test {
 protected:
  void SetUp() override {
    write_pairs(dir_.file("pairs.jsonl"), 60);
    testing::write_file(dir_.file("recipe.yaml"), R"(model:
  path: builtin:micro
  dtype: float32
  device: cpu
quantization:
  type: nf4
adapter:
  r: 8
  alpha: 16
  dropout: 0.0
  dtype: float32
data:
  path: )" + dir_.file("pairs.jsonl") + R"(
  format: preference
  max_seq_len: 64
  eval_fraction: 0.2
training:
  objective: dpo
  micro_batch_size: 4
  grad_accum_steps: 1
  max_steps: 8
  lr: 5.0e-3
  optimizer: adamw
  eval_every: 4
output:
  save_every: 4
distributed:
  timeout_s: 60
)");
  }

  int run(const std::string& args, std::string* out = nullptr) {
    std::string captured;
    const int code = testing::run_command(
        "OMP_NUM_THREADS=1 QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache " +
            testing::binary_dir() + "/tools/qtrain " + dir_.file("recipe.yaml") + " " + args,
        &captured);
    if (out) *out = captured;
    return code;
  }

  testing::ScratchDir dir_{"qtrain-pref-cli"};
};

TEST_F(PreferenceCli, DpoRaisesHeldOutRewardAccuracyAndLogsItsMetrics) {
  const std::string run_dir = dir_.file("dpo");
  std::string out;
  ASSERT_EQ(run("output.dir=" + run_dir, &out), 0) << out;
  const auto evals = testing::metrics_rows_with(run_dir, "eval_rewards/accuracies");
  ASSERT_EQ(evals.size(), 3u) << out;                                 // steps 0, 4, 8
  EXPECT_EQ(evals[0]["eval_rewards/accuracies"].get<double>(), 0.0);  // policy = reference
  EXPECT_NEAR(evals[0]["eval_loss"].get<double>(), std::log(2.0), 1e-6);
  EXPECT_GE(evals[2]["eval_rewards/accuracies"].get<double>(), 0.9);
  EXPECT_GT(evals[2]["eval_rewards/margins"].get<double>(), 0.5);
  EXPECT_EQ(evals[2]["eval_pairs"].get<double>(), 12.0);
  const auto steps = testing::metrics_rows_with(run_dir, "rewards/accuracies");
  ASSERT_EQ(steps.size(), 8u);
  for (const auto& row : steps) {
    EXPECT_EQ(row["pairs"].get<int64_t>(), 4);
    // margins = chosen - rejected, averaged over the same pairs (float32 sums).
    EXPECT_NEAR(row["rewards/margins"].get<double>(),
                row["rewards/chosen"].get<double>() - row["rewards/rejected"].get<double>(), 1e-5);
  }
  EXPECT_LT(steps.back()["loss"].get<double>(), 0.5 * steps.front()["loss"].get<double>());
  EXPECT_NE(out.find("| acc "), std::string::npos) << out;
  EXPECT_TRUE(testing::read_file(run_dir + "/adapter/adapter_config.json").find("lora") !=
              std::string::npos);
}

TEST_F(PreferenceCli, PrecomputedReferenceResumeAndTwoRanksAgree) {
  const std::string base = dir_.file("base"), pre = dir_.file("pre"), split = dir_.file("split"),
                    one = dir_.file("one"), two = dir_.file("two");
  const std::string quiet = " training.eval_every=0 adapter.dropout=0.1";
  std::string out;
  ASSERT_EQ(run("output.dir=" + base + quiet, &out), 0) << out;
  ASSERT_EQ(run("output.dir=" + pre + quiet + " training.precompute_ref_log_probs=true", &out), 0)
      << out;
  EXPECT_NE(out.find("computed once"), std::string::npos) << out;
  ASSERT_EQ(run("output.dir=" + split + quiet + " --stop-after 4", &out), 75) << out;
  ASSERT_EQ(run("output.dir=" + split + quiet + " --resume", &out), 0) << out;
  const auto l_base = testing::metric_values(base, "loss"),
             l_pre = testing::metric_values(pre, "loss"),
             l_split = testing::metric_values(split, "loss");
  ASSERT_EQ(l_base.size(), 8u);
  ASSERT_EQ(l_pre.size(), 8u);
  ASSERT_EQ(l_split.size(), 8u);
  for (size_t i = 0; i < l_base.size(); ++i) {
    EXPECT_NEAR(l_pre[i], l_base[i], 1e-6) << "step " << i + 1;
    EXPECT_DOUBLE_EQ(l_split[i], l_base[i]) << "step " << i + 1;
  }
  const std::string no_dropout = " training.eval_every=0 adapter.dropout=0.0";
  ASSERT_EQ(run("output.dir=" + one + no_dropout + " training.grad_accum_steps=2", &out), 0) << out;
  ASSERT_EQ(run("output.dir=" + two + no_dropout + " --nproc 2", &out), 0) << out;
  const auto l_one = testing::metric_values(one, "loss"),
             l_two = testing::metric_values(two, "loss");
  const auto a_one = testing::metric_values(one, "rewards/accuracies"),
             a_two = testing::metric_values(two, "rewards/accuracies");
  ASSERT_EQ(l_one.size(), l_two.size());
  for (size_t i = 0; i < l_one.size(); ++i) {
    EXPECT_NEAR(l_two[i], l_one[i], 1e-5) << "step " << i + 1;
    EXPECT_NEAR(a_two[i], a_one[i], 1e-9) << "step " << i + 1;
  }
}

TEST_F(PreferenceCli, OrpoAndConversationalPairsTrain) {
  const std::string orpo = dir_.file("orpo");
  std::string out;
  ASSERT_EQ(run("output.dir=" + orpo + " training.objective=orpo training.orpo_lambda=0.2", &out),
            0)
      << out;
  const auto losses = testing::metric_values(orpo, "loss");
  ASSERT_EQ(losses.size(), 8u);
  EXPECT_LT(losses.back(), losses.front());
  EXPECT_FALSE(testing::metrics_rows_with(orpo, "log_odds_ratio").empty());

  // Conversational pairs: an explicit prompt with string answers, and implicit prompts.
  std::string chat;
  for (int i = 0; i < 12; ++i) {
    const std::string q = "Question " + std::to_string(i) + "?";
    if (i % 2 == 0) {
      chat += nlohmann::json{{"prompt", {{{"role", "user"}, {"content", q}}}},
                             {"chosen", "Yes, gladly."},
                             {"rejected", "No."}}
                  .dump() +
              "\n";
    } else {
      const nlohmann::json user = {{"role", "user"}, {"content", q}};
      chat +=
          nlohmann::json{{"chosen", {user, {{"role", "assistant"}, {"content", "Yes, gladly."}}}},
                         {"rejected", {user, {{"role", "assistant"}, {"content", "No."}}}}}
              .dump() +
          "\n";
    }
  }
  testing::write_file(dir_.file("chat.jsonl"), chat);
  const std::string conv = dir_.file("conv");
  ASSERT_EQ(run("output.dir=" + conv + " data.path=" + dir_.file("chat.jsonl") +
                    " data.template=chatml training.max_steps=2 training.eval_every=0",
                &out),
            0)
      << out;
  EXPECT_EQ(testing::metric_values(conv, "loss").size(), 2u);
  // Without a chat template the conversations cannot be rendered.
  EXPECT_EQ(run("output.dir=" + dir_.file("conv2") + " data.path=" + dir_.file("chat.jsonl"), &out),
            3)
      << out;
  EXPECT_NE(out.find("data.template"), std::string::npos) << out;
}

TEST_F(PreferenceCli, BadInputIsRefusedWithWhereAndWhy) {
  std::string out;
  testing::write_file(dir_.file("bad.jsonl"),
                      R"({"prompt": "a", "chosen": " b", "rejected": " c"}
{"prompt": "a", "chosen": " b"}
)");
  EXPECT_NE(run("output.dir=" + dir_.file("bad") + " data.path=" + dir_.file("bad.jsonl"), &out),
            0);
  EXPECT_NE(out.find("bad.jsonl:2"), std::string::npos) << out;
  EXPECT_NE(out.find("rejected"), std::string::npos) << out;

  EXPECT_EQ(run("output.dir=" + dir_.file("x") + " data.format=alpaca", &out), 3) << out;
  EXPECT_NE(out.find("set data.format: preference"), std::string::npos) << out;
  EXPECT_EQ(run("output.dir=" + dir_.file("x") + " data.packing=true", &out), 3) << out;
  EXPECT_NE(out.find("data.packing"), std::string::npos) << out;
  EXPECT_EQ(run("output.dir=" + dir_.file("x") + " training.objective=sft", &out), 3) << out;
  EXPECT_NE(out.find("dpo or orpo"), std::string::npos) << out;
  EXPECT_EQ(run("output.dir=" + dir_.file("x") +
                    " training.objective=orpo "
                    "training.precompute_ref_log_probs=true",
                &out),
            3)
      << out;
  EXPECT_EQ(run("output.dir=" + dir_.file("x") + " adapter.target_modules=[q_proj,lm_head]", &out),
            3)
      << out;
  EXPECT_NE(out.find("lm_head"), std::string::npos) << out;
}

}  // namespace
}  // namespace qtrain

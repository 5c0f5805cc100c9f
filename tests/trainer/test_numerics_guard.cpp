// The numerics guard: the loss-spike detector's arithmetic, and through the real qtrain binary
// that samples without a label are named when dropped, that a non-finite step names its step and
// samples, and that a loss spike caused by one odd sample is reported with that sample's line.
#include "tests/support/test_support.h"
#include "trainer/numerics_guard.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace qtrain {
namespace {

TEST(LossSpikeDetector, ReportsOnlyAfterWarmupAndAboveFactorTimesTheMovingMean) {
  LossSpikeDetector detector(/*factor=*/2.0, /*warmup=*/3, /*alpha=*/0.5);
  EXPECT_FALSE(detector.observe(1.0));   // mean 1
  EXPECT_FALSE(detector.observe(10.0));  // inside warmup: mean 0.5 * 1 + 0.5 * 10 = 5.5
  EXPECT_DOUBLE_EQ(detector.mean(), 5.5);
  EXPECT_FALSE(detector.observe(1.5));  // mean 3.5
  EXPECT_FALSE(detector.observe(7.0));  // exactly 2x: not above; mean 5.25
  EXPECT_DOUBLE_EQ(detector.mean(), 5.25);
  const std::optional<double> spike = detector.observe(10.6);
  ASSERT_TRUE(spike.has_value());
  EXPECT_DOUBLE_EQ(*spike, 5.25);
  EXPECT_DOUBLE_EQ(detector.mean(), 0.5 * 5.25 + 0.5 * 10.6);  // a spike still moves the mean
  EXPECT_EQ(detector.count(), 5);
  EXPECT_FALSE(detector.observe(std::nan("")));  // non-finite losses are the other guard's job
  EXPECT_EQ(detector.count(), 5);

  LossSpikeDetector resumed(2.0, 3, 0.5);
  resumed.restore(detector.mean(), detector.count());
  EXPECT_EQ(resumed.observe(20.0).has_value(), detector.observe(20.0).has_value());
  EXPECT_DOUBLE_EQ(resumed.mean(), detector.mean());
}

TEST(NumericsGuard, DescribesSamplesAndFindsTheBadGradient) {
  EXPECT_EQ(describe_samples({}), "none");
  EXPECT_EQ(describe_samples({"a.jsonl:1", "a.jsonl:9"}), "a.jsonl:1, a.jsonl:9");
  EXPECT_EQ(describe_samples({"x:1", "x:2", "x:3"}, 2), "x:1, x:2 and 1 more");

  at::Tensor a = at::zeros({2}).requires_grad_(), b = at::zeros({3}).requires_grad_();
  (a.sum() + b.sum()).backward();
  EXPECT_EQ(first_nonfinite_gradient({"a", "b"}, {a, b}), "");
  b.mutable_grad()[1] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(first_nonfinite_gradient({"a", "b"}, {a, b}), "b");
}

class NumericsCli : public ::testing::Test {
 protected:
  // `samples`: Alpaca records, one per line of data.jsonl.
  void write_recipe(const std::vector<nlohmann::json>& samples, const std::string& extra) {
    std::ofstream data(dir_.file("data.jsonl"));
    for (const auto& sample : samples) data << sample.dump() << "\n";
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
  path: )" + dir_.file("data.jsonl") + R"(
  max_seq_len: 256
training:
  micro_batch_size: 1
  grad_accum_steps: 1
  lr: 5.0e-3
  warmup_steps: 0
  scheduler: constant
  seed: 3
output:
  dir: )" + dir_.file("run") + R"(
  save_every: 0
)" + extra);
  }

  int run(const std::string& args, std::string* out) {
    return testing::run_command("QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache " +
                                    testing::binary_dir() + "/tools/qtrain " +
                                    dir_.file("recipe.yaml") + " " + args,
                                out);
  }

  std::vector<nlohmann::json> metrics() {
    std::ifstream in(dir_.file("run/metrics.jsonl"));
    std::vector<nlohmann::json> out;
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
    return out;
  }

  static nlohmann::json easy() { return {{"instruction", "Say hi."}, {"output", "hi"}}; }

  testing::ScratchDir dir_{"qtrain-numerics"};
};

TEST_F(NumericsCli, SamplesWithEveryLabelMaskedAreNamedWhenDropped) {
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += "word" + std::to_string(i % 7) + " ";
  std::vector<nlohmann::json> samples(6, easy());
  samples[2] = {{"instruction", long_prompt}, {"output", "ok"}};         // line 3
  samples[4] = {{"instruction", long_prompt + " y"}, {"output", "ok"}};  // line 5
  write_recipe(samples, "");
  std::string out;
  ASSERT_EQ(run("training.max_steps=1", &out), 0) << out;
  EXPECT_NE(out.find("2 sample(s) dropped with every label masked"), std::string::npos) << out;
  EXPECT_NE(out.find(dir_.file("data.jsonl") + ":3, " + dir_.file("data.jsonl") + ":5"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("raise data.max_seq_len"), std::string::npos) << out;
}

TEST_F(NumericsCli, NonFiniteStepNamesStepAndSamples) {
  std::vector<nlohmann::json> samples(8, easy());
  write_recipe(samples, "");
  std::string out;
  // A learning rate this large overflows the adapters within a few steps.
  ASSERT_EQ(run("training.max_steps=8 training.lr=1e30 training.max_grad_norm=0", &out), 8) << out;
  EXPECT_NE(out.find("non-finite"), std::string::npos) << out;
  EXPECT_NE(out.find(" at step "), std::string::npos) << out;
  EXPECT_NE(out.find("(samples " + dir_.file("data.jsonl") + ":"), std::string::npos) << out;
  EXPECT_NE(out.find("lower training.lr"), std::string::npos) << out;

  // on_nonfinite=skip: every skipped step is in the metrics with the samples it held.
  ASSERT_EQ(run("training.max_steps=8 training.lr=1e30 training.max_grad_norm=0 "
                "training.on_nonfinite=skip output.overwrite=true",
                &out),
            0)
      << out;
  int skipped = 0;
  for (const auto& m : metrics()) {
    if (!m.value("skipped", false)) continue;
    ++skipped;
    EXPECT_EQ(m.at("event"), "nonfinite");
    ASSERT_EQ(m.at("samples").size(), 1u);
    EXPECT_EQ(m.at("samples")[0].get<std::string>().rfind(dir_.file("data.jsonl") + ":", 0), 0u);
  }
  EXPECT_GT(skipped, 0) << out;
}

TEST_F(NumericsCli, LossSpikeNamesTheOddSample) {
  // Twelve copies of one easy sample and, on line 13, a long response of random words: once the
  // easy sample is learnt, the step that meets the odd one has a loss several times the mean.
  std::vector<nlohmann::json> samples(12, easy());
  std::string noise;
  uint32_t state = 12345;
  for (int i = 0; i < 12; ++i) {
    state = state * 1664525u + 1013904223u;
    noise += std::string(1, static_cast<char>('a' + (state >> 24) % 26)) + "q" +
             std::to_string(state % 97) + " ";
  }
  samples.push_back({{"instruction", "Say hi."}, {"output", noise}});
  write_recipe(samples, "");
  std::string out;
  ASSERT_EQ(run("training.max_steps=26", &out), 0) << out;  // two epochs of 13 steps
  const std::string odd = dir_.file("data.jsonl") + ":13";
  EXPECT_NE(out.find("loss spike at step"), std::string::npos) << out;
  bool named = false;
  for (const auto& m : metrics()) {
    if (m.value("event", "") != "loss_spike") continue;
    EXPECT_GT(m.at("value").get<double>(), 2 * m.at("recent_mean").get<double>());
    named = named || m.at("samples") == nlohmann::json::array({odd});
  }
  EXPECT_TRUE(named) << "no spike named " << odd << "\n" << out;
}

}  // namespace
}  // namespace qtrain

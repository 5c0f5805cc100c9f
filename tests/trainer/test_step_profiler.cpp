// QTRAIN_PROFILE_STEP: the variable is read strictly; a profiled piece of work shows its own
// operators in the summary and the Chrome trace; through the real binary, the named step of a
// run leaves profile-step-N.txt and .trace.json in the run directory, and a step past the run's
// end is refused before the run directory is touched.
#include "core/error.h"
#include "tests/support/test_support.h"
#include "trainer/step_profiler.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>

namespace qtrain {
namespace {

class ProfileStepVariable {
 public:
  explicit ProfileStepVariable(const char* value) {
    if (value) {
      setenv("QTRAIN_PROFILE_STEP", value, 1);
    } else {
      unsetenv("QTRAIN_PROFILE_STEP");
    }
  }
  ~ProfileStepVariable() { unsetenv("QTRAIN_PROFILE_STEP"); }
};

ErrorKind kind_of_request(const char* value) {
  ProfileStepVariable set(value);
  try {
    requested_profile_step();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("QTRAIN_PROFILE_STEP"), std::string::npos) << e.what();
    return e.kind();
  }
  return ErrorKind::kInternal;  // no error
}

TEST(StepProfiler, TheVariableIsAPositiveStepNumber) {
  {
    ProfileStepVariable unset(nullptr);
    EXPECT_EQ(requested_profile_step(), 0);
  }
  {
    ProfileStepVariable empty("");
    EXPECT_EQ(requested_profile_step(), 0);
  }
  {
    ProfileStepVariable three("3");
    EXPECT_EQ(requested_profile_step(), 3);
  }
  for (const char* bad : {"0", "-1", "two", "2.5", " 2", "99999999999999999999"}) {
    EXPECT_EQ(kind_of_request(bad), ErrorKind::kConfig) << bad;
  }
}

TEST(StepProfiler, SummaryAndTraceShowTheProfiledOperators) {
  testing::ScratchDir dir;
  const at::Tensor a = at::randn({64, 64});
  std::string summary;
  {
    StepProfiler profiler(/*cuda=*/false);
    for (int i = 0; i < 3; ++i) at::mm(a, a);
    summary = profiler.finish(dir.file("profile"), "three matmuls");
  }
  EXPECT_EQ(summary, dir.file("profile.txt"));
  const std::string text = testing::read_file(summary);
  EXPECT_EQ(text.rfind("three matmuls\n", 0), 0u) << text;
  // aten::mm with its three calls, in the table's "ms % calls name" columns.
  bool found = false;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream columns(line);
    double ms = 0;
    std::string percent, name;
    int64_t calls = 0;
    if (columns >> ms >> percent >> calls >> name && name == "aten::mm") {
      found = calls == 3 && ms > 0;
    }
  }
  EXPECT_TRUE(found) << text;
  const auto trace = nlohmann::json::parse(testing::read_file(dir.file("profile.trace.json")));
  int mm_events = 0;
  for (const auto& e : trace.at("traceEvents")) mm_events += e.value("name", "") == "aten::mm";
  EXPECT_EQ(mm_events, 3);
}

class StepProfilerCli : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::write_file(dir_.file("data.jsonl"),
                        R"({"instruction": "Name a colour.", "output": "Blue."}
{"instruction": "Name a fruit.", "output": "A pear."}
{"instruction": "Name a tree.", "output": "An oak."}
{"instruction": "Name a bird.", "output": "A robin."}
)");
    testing::write_file(dir_.file("recipe.yaml"), R"(model:
  path: builtin:micro
  dtype: float32
  device: cpu
data:
  path: )" + dir_.file("data.jsonl") + R"(
  eval_fraction: 0
training:
  micro_batch_size: 2
  max_steps: 2
  warmup_steps: 0
output:
  dir: )" + dir_.file("run") + R"(
  tensorboard: false
)");
  }

  int run(const std::string& step, std::string* out) {
    return testing::run_command("OMP_NUM_THREADS=1 QTRAIN_PROFILE_STEP=" + step +
                                    " QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache " +
                                    testing::binary_dir() + "/tools/qtrain " +
                                    dir_.file("recipe.yaml"),
                                out);
  }

  testing::ScratchDir dir_;
};

TEST_F(StepProfilerCli, TheNamedStepLeavesItsProfileInTheRunDirectory) {
  std::string out;
  ASSERT_EQ(run("2", &out), 0) << out;
  EXPECT_NE(out.find("profile of step 2 written to"), std::string::npos) << out;
  const std::string text = testing::read_file(dir_.file("run/profile-step-2.txt"));
  EXPECT_EQ(text.rfind("qtrain step 2 on cpu in float32", 0), 0u) << text;
  EXPECT_NE(text.find("aten::mm"), std::string::npos) << text;
  EXPECT_TRUE(std::filesystem::exists(dir_.file("run/profile-step-2.trace.json")));
  EXPECT_FALSE(std::filesystem::exists(dir_.file("run/profile-step-1.txt")));
}

TEST_F(StepProfilerCli, AStepPastTheEndIsRefusedBeforeTheRunDirectoryIsWritten) {
  std::string out;
  EXPECT_EQ(run("3", &out), 3) << out;
  EXPECT_NE(out.find("QTRAIN_PROFILE_STEP=3 but the run has 2 steps"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir_.file("run/metrics.jsonl")));
  EXPECT_NE(run("soon", &out), 0);
  EXPECT_NE(out.find("QTRAIN_PROFILE_STEP must be a step number"), std::string::npos) << out;
}

}  // namespace
}  // namespace qtrain

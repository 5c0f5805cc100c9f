// Learning-rate schedules against transformers' formulas and its schedulers.
#include "core/error.h"
#include "tests/support/test_support.h"
#include "trainer/optim/lr_scheduler.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <iterator>
#include <vector>

namespace qtrain {
namespace {

ScheduleOptions schedule(const std::string& kind, int64_t warmup, int64_t total,
                         double min_ratio = 0) {
  return {kind, 2e-4, warmup, total, min_ratio};
}

TEST(OptimSchedule, WarmupIsLinearFromZero) {
  for (const char* kind : {"constant", "linear", "cosine"}) {
    const ScheduleOptions o = schedule(kind, 4, 20);
    EXPECT_EQ(lr_at(o, 0), 0.0) << kind;
    EXPECT_EQ(lr_at(o, 1), 2e-4 * 0.25) << kind;
    EXPECT_EQ(lr_at(o, 3), 2e-4 * 0.75) << kind;
    EXPECT_EQ(lr_at(o, 4), 2e-4) << kind;
  }
}

TEST(OptimSchedule, DecayFormulas) {
  EXPECT_EQ(lr_at(schedule("constant", 0, 10), 0), 2e-4);
  EXPECT_EQ(lr_at(schedule("constant", 0, 10), 50), 2e-4);
  EXPECT_EQ(lr_at(schedule("linear", 2, 10), 6), 2e-4 * (4.0 / 8.0));
  EXPECT_EQ(lr_at(schedule("linear", 2, 10), 10), 0.0);
  EXPECT_EQ(lr_at(schedule("linear", 2, 10), 12), 0.0);  // clamped past the end
  EXPECT_DOUBLE_EQ(lr_at(schedule("cosine", 2, 10), 6), 2e-4 * 0.5);
  EXPECT_NEAR(lr_at(schedule("cosine", 2, 10), 10), 0.0, 1e-20);
  EXPECT_DOUBLE_EQ(lr_at(schedule("cosine", 2, 10, 0.1), 10), 2e-4 * 0.1);
  EXPECT_DOUBLE_EQ(lr_at(schedule("linear", 0, 10, 0.1), 10), 2e-4 * 0.1);
  EXPECT_DOUBLE_EQ(lr_at(schedule("linear", 0, 10, 0.1), 5), 2e-4 * (0.1 + 0.9 * 0.5));
}

TEST(OptimSchedule, BadOptionsAreConfigErrors) {
  try {
    lr_at(schedule("exponential", 0, 10), 0);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.context().field, "training.scheduler");
  }
  EXPECT_THROW(lr_at(schedule("linear", -1, 10), 0), Error);
  EXPECT_THROW(lr_at(schedule("cosine", 0, 10, 1.5), 0), Error);
}

// transformers' LambdaLR values, read before each optimizer step, equal ours exactly.
TEST(OptimSchedule, MatchesTransformers) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  const ScheduleOptions cases[] = {
      {"constant", 3e-4, 5, 30, 0}, {"linear", 1e-3, 7, 40, 0}, {"linear", 2e-4, 0, 25, 0},
      {"cosine", 2e-4, 10, 50, 0},  {"cosine", 1e-4, 0, 33, 0}, {"cosine", 5e-4, 4, 20, 0.1},
      {"linear", 1e-3, 12, 10, 0},  // warmup longer than the run
  };
  std::vector<std::string> args;
  for (const ScheduleOptions& o : cases) {
    args.push_back(o.kind + "," + std::to_string(o.base_lr) + "," + std::to_string(o.warmup_steps) +
                   "," + std::to_string(o.total_steps) + "," + std::to_string(o.min_lr_ratio) +
                   "," + std::to_string(o.total_steps + 5));  // a few steps past the end too
  }
  std::string out;
  ASSERT_EQ(testing::run_reference_script("optim_schedules.py", args, &out), 0) << out;
  const auto all = nlohmann::json::parse(out);
  ASSERT_EQ(all.size(), std::size(cases));
  for (size_t c = 0; c < std::size(cases); ++c) {
    ScheduleOptions o = cases[c];
    o.base_lr = std::stod(std::to_string(o.base_lr));  // the value the script received
    const auto& lrs = all[c];
    ASSERT_EQ(static_cast<int64_t>(lrs.size()), o.total_steps + 5);
    for (int64_t step = 0; step < o.total_steps + 5; ++step) {
      EXPECT_EQ(lr_at(o, step), lrs[step].get<double>())
          << o.kind << " W=" << o.warmup_steps << " T=" << o.total_steps << " step " << step;
    }
  }
}

}  // namespace
}  // namespace qtrain

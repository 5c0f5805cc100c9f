// Dynamic loss scaling follows torch.amp.GradScaler's rules: x2 after 2000 finite steps in a row,
// x0.5 and a skipped step on overflow; disabled scalers are the identity.
#include "core/error.h"
#include "trainer/loss_scaler.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>

namespace qtrain {
namespace {

TEST(LossScaler, DisabledIsTheIdentity) {
  LossScaler s(false);
  EXPECT_EQ(s.scale(), 1.0);
  EXPECT_TRUE(s.update(false));  // the caller reports the non-finite step itself
  EXPECT_EQ(s.scale(), 1.0);
}

TEST(LossScaler, GrowsAfterTheIntervalAndBacksOffOnOverflow) {
  LossScaler s(true);
  EXPECT_EQ(s.scale(), 65536.0);
  for (int64_t i = 0; i < LossScaler::kGrowthInterval - 1; ++i) EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 131072.0);
  EXPECT_EQ(s.good_steps(), 0);
  EXPECT_TRUE(s.update(true));
  EXPECT_FALSE(s.update(false));  // skip the step
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_EQ(s.good_steps(), 0);  // an overflow restarts the growth count
}

TEST(LossScaler, AtTheFloorAnOverflowIsNoLongerTheScalesFault) {
  LossScaler s(true);
  for (int i = 0; i < 16; ++i) EXPECT_FALSE(s.update(false));
  EXPECT_EQ(s.scale(), 1.0);
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 1.0);
}

TEST(LossScaler, RestoreRefusesImpossibleStates) {
  LossScaler s(true);
  s.restore(1024.0, 7, "trainer_state.json");
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_EQ(s.good_steps(), 7);
  EXPECT_THROW(s.restore(std::numeric_limits<double>::quiet_NaN(), 0, "t.json"), Error);
  EXPECT_THROW(s.restore(0.0, 0, "t.json"), Error);
  EXPECT_THROW(s.restore(8.0, -1, "t.json"), Error);
}

TEST(LossScaler, UnscaleDividesEveryGradient) {
  at::Tensor a = at::zeros({3}).requires_grad_(true);
  at::Tensor b = at::zeros({2, 2}).requires_grad_(true);
  at::Tensor no_grad = at::zeros({2}).requires_grad_(true);
  a.mutable_grad() = at::full({3}, 8.0);
  b.mutable_grad() = at::full({2, 2}, -4.0);
  unscale_gradients({a, b, no_grad}, 4.0);
  EXPECT_TRUE(at::equal(a.grad(), at::full({3}, 2.0)));
  EXPECT_TRUE(at::equal(b.grad(), at::full({2, 2}, -1.0)));
  EXPECT_FALSE(no_grad.grad().defined());
}

}  // namespace
}  // namespace qtrain

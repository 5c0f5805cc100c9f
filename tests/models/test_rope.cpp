// RoPE properties that hold whatever the reference: it rotates pairs (j, j + d/2), preserves
// norms, and makes q.k depend only on the relative position.
#include "models/rope.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>

namespace qtrain {
namespace {

at::Tensor positions(std::initializer_list<int64_t> values) {
  return at::tensor(std::vector<int64_t>(values), at::kLong).view({1, -1});
}

TEST(RopeTest, InverseFrequenciesFollowTheFormula) {
  const int64_t d = 64;
  const double theta = 500000.0;
  at::Tensor inv = rope_inverse_frequencies(d, theta, {});
  ASSERT_EQ(inv.size(0), d / 2);
  for (int64_t j = 0; j < d / 2; ++j) {
    const double expected = 1.0 / std::pow(theta, 2.0 * j / d);
    EXPECT_NEAR(inv[j].item<double>() / expected, 1.0, 1e-6) << j;
  }
}

TEST(RopeTest, LinearScalingDividesEveryFrequency) {
  RopeScaling linear{.type = RopeType::kLinear, .factor = 4.0};
  at::Tensor plain = rope_inverse_frequencies(32, 10000.0, {});
  at::Tensor scaled = rope_inverse_frequencies(32, 10000.0, linear);
  EXPECT_TRUE(at::allclose(scaled * 4.0, plain, 1e-6, 0));
}

TEST(RopeTest, Llama3ScalingKeepsHighDividesLowAndBlendsTheBand) {
  RopeScaling s{.type = RopeType::kLlama3,
                .factor = 8.0,
                .low_freq_factor = 1.0,
                .high_freq_factor = 4.0,
                .original_max_position_embeddings = 8192};
  const int64_t d = 128;
  at::Tensor plain = rope_inverse_frequencies(d, 500000.0, {});
  at::Tensor scaled = rope_inverse_frequencies(d, 500000.0, s);
  int kept = 0, divided = 0, blended = 0;
  for (int64_t j = 0; j < d / 2; ++j) {
    const double f = plain[j].item<double>();
    const double wavelen = 2 * M_PI / f;
    double expected;
    if (wavelen < 8192.0 / 4.0) {
      expected = f;
      ++kept;
    } else if (wavelen > 8192.0 / 1.0) {
      expected = f / 8.0;
      ++divided;
    } else {
      const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
      expected = (1 - smooth) * f / 8.0 + smooth * f;
      ++blended;
    }
    EXPECT_NEAR(scaled[j].item<double>() / expected, 1.0, 1e-5) << j;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
}

TEST(RopeTest, RotatesElementJTogetherWithElementJPlusHalf) {
  const int64_t d = 8;
  at::Tensor inv = rope_inverse_frequencies(d, 10000.0, {});
  auto [cos, sin] = rope_cos_sin(inv, positions({3}), at::kFloat);
  for (int64_t j = 0; j < d / 2; ++j) {
    at::Tensor e = at::zeros({1, 1, 1, d});
    e[0][0][0][j] = 1.0;
    at::Tensor r = apply_rope(e, cos, sin).view({d});
    const double angle = 3.0 * inv[j].item<double>();
    at::Tensor expected = at::zeros({d});
    expected[j] = std::cos(angle);
    expected[j + d / 2] = std::sin(angle);
    EXPECT_TRUE(at::allclose(r, expected, 1e-6, 1e-6)) << "j=" << j << " got " << r;
  }
}

TEST(RopeTest, PreservesNorms) {
  at::manual_seed(1);
  const int64_t d = 64;
  at::Tensor x = at::randn({2, 3, 5, d});
  at::Tensor inv = rope_inverse_frequencies(d, 10000.0, {});
  at::Tensor pos = at::randint(0, 4096, {2, 5}, at::kLong);
  auto [cos, sin] = rope_cos_sin(inv, pos, at::kFloat);
  at::Tensor y = apply_rope(x, cos, sin);
  EXPECT_TRUE(at::allclose(y.norm(2, -1), x.norm(2, -1), 1e-5, 1e-5));
}

TEST(RopeTest, TokenMajorLayoutRotatesLikeHeadMajor) {
  at::manual_seed(3);
  const int64_t d = 16;
  at::Tensor x = at::randn({2, 5, 3, d});  // [B, T, H, hd]
  at::Tensor inv = rope_inverse_frequencies(d, 10000.0, {});
  auto [cos, sin] = rope_cos_sin(inv, at::randint(0, 100, {2, 5}, at::kLong), at::kFloat);
  at::Tensor head_major = apply_rope(x.transpose(1, 2), cos, sin).transpose(1, 2);
  EXPECT_TRUE(at::equal(apply_rope(x, cos, sin, /*head_axis=*/2), head_major));
}

TEST(RopeTest, FrequenciesAreCopiedToADeviceOnce) {
  RopeFrequencies frequencies(rope_inverse_frequencies(8, 10000.0, {}));
  at::Tensor first = frequencies.on(at::kCPU);
  EXPECT_TRUE(first.is_same(frequencies.on(at::kCPU)));
  if (torch::cuda::is_available()) {
    const at::Device gpu(at::kCUDA, 0);
    at::Tensor copy = frequencies.on(gpu);
    EXPECT_TRUE(copy.is_cuda());
    EXPECT_TRUE(copy.is_same(frequencies.on(gpu)));
    EXPECT_TRUE(at::equal(copy.cpu(), first));
  }
}

TEST(RopeTest, ScoresDependOnlyOnRelativePosition) {
  at::manual_seed(2);
  const int64_t d = 32;
  at::Tensor q = at::randn({1, 1, 1, d});
  at::Tensor k = at::randn({1, 1, 1, d});
  at::Tensor inv = rope_inverse_frequencies(d, 10000.0, {});
  auto score = [&](int64_t qpos, int64_t kpos) {
    auto [cq, sq] = rope_cos_sin(inv, positions({qpos}), at::kFloat);
    auto [ck, sk] = rope_cos_sin(inv, positions({kpos}), at::kFloat);
    return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item<double>();
  };
  for (int64_t offset : {0, 1, 17, 250}) {
    EXPECT_NEAR(score(7 + offset, 3 + offset), score(7, 3), 1e-4) << offset;
    EXPECT_NEAR(score(2 + offset, 9 + offset), score(2, 9), 1e-4) << offset;
  }
  EXPECT_GT(std::abs(score(7, 3) - score(7, 4)), 1e-3);  // and it does depend on it
}

}  // namespace
}  // namespace qtrain

// Gradient clipping against torch::nn::utils::clip_grad_norm_.
#include "core/error.h"
#include "tests/support/test_support.h"
#include "trainer/optim/grad_clip.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/utils/clip_grad.h>

#include <cmath>

namespace qtrain {
namespace {

std::vector<at::Tensor> params_with_grads(uint64_t seed, double scale) {
  at::manual_seed(seed);
  std::vector<at::Tensor> params;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{7, 3}, {50}, {4, 4, 4}}) {
    at::Tensor p = at::zeros(shape).set_requires_grad(true);
    p.mutable_grad() = at::randn(shape) * scale;
    params.push_back(p);
  }
  params.push_back(at::zeros({3}).set_requires_grad(true));  // no grad: ignored
  return params;
}

std::vector<at::Tensor> clone_with_grads(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& p : params) {
    at::Tensor q = p.detach().clone().set_requires_grad(true);
    if (p.grad().defined()) q.mutable_grad() = p.grad().clone();
    out.push_back(q);
  }
  return out;
}

TEST(OptimClip, MatchesTorchClipGradNorm) {
  for (const double max_norm : {0.3, 1e3}) {  // clipping, and a bound that is not reached
    const auto ours = params_with_grads(1, 2.0);
    const auto theirs = clone_with_grads(ours);
    const GradNormResult r = clip_grad_norm(ours, max_norm);
    const double expected = torch::nn::utils::clip_grad_norm_(theirs, max_norm);
    EXPECT_TRUE(r.finite);
    EXPECT_EQ(r.total_norm, expected);
    for (size_t i = 0; i + 1 < ours.size(); ++i) {
      EXPECT_TRUE(ours[i].grad().equal(theirs[i].grad())) << max_norm << " param " << i;
    }
  }
}

TEST(OptimClip, ClippedNormIsMaxNorm) {
  const auto params = params_with_grads(2, 5.0);
  const GradNormResult before = clip_grad_norm(params, 0.5);
  EXPECT_GT(before.total_norm, 0.5);
  const GradNormResult after = clip_grad_norm(params, 0);
  EXPECT_NEAR(after.total_norm, 0.5, 1e-5);
}

TEST(OptimClip, MeasureOnlyLeavesGradsAlone) {
  const auto params = params_with_grads(3, 5.0);
  const auto copy = clone_with_grads(params);
  const GradNormResult r = clip_grad_norm(params, 0);
  double sum = 0;
  for (size_t i = 0; i + 1 < params.size(); ++i) {
    EXPECT_TRUE(params[i].grad().equal(copy[i].grad()));
    sum += params[i].grad().to(at::kDouble).pow(2).sum().item<double>();
  }
  EXPECT_NEAR(r.total_norm, std::sqrt(sum), 1e-5 * std::sqrt(sum));
}

TEST(OptimClip, NonFiniteNormScalesNothing) {
  const auto params = params_with_grads(4, 1.0);
  params[1].mutable_grad()[3] = NAN;
  const auto copy = clone_with_grads(params);
  const GradNormResult r = clip_grad_norm(params, 0.1);
  EXPECT_FALSE(r.finite);
  EXPECT_TRUE(params[0].grad().equal(copy[0].grad()));
  params[2].mutable_grad()[0][0][0] = INFINITY;
  EXPECT_FALSE(clip_grad_norm(params, 0.1).finite);
}

TEST(OptimClip, Bf16GradsUseFloat32Norms) {
  at::manual_seed(5);
  at::Tensor p = at::zeros({300}, at::kBFloat16).set_requires_grad(true);
  const at::Tensor g = at::randn({300}).to(at::kBFloat16);
  p.mutable_grad() = g.clone();
  const GradNormResult r = clip_grad_norm({p}, 1.0);
  EXPECT_EQ(r.total_norm, g.to(at::kFloat).norm().item<double>());
  EXPECT_EQ(p.grad().scalar_type(), at::kBFloat16);
  const double clipped = p.grad().to(at::kFloat).norm().item<double>();
  EXPECT_NEAR(clipped, 1.0, 1e-2);  // bf16 rounding of the scaled grads
}

TEST(OptimClip, NoGradsGiveZero) {
  const GradNormResult r = clip_grad_norm({at::zeros({2}).set_requires_grad(true)}, 1.0);
  EXPECT_EQ(r.total_norm, 0.0);
  EXPECT_TRUE(r.finite);
}

// The device-side form: the norm as a float32 [] tensor, the same value and the same clipped
// gradients as the host-reading form (and so as torch).
TEST(OptimClip, OnDeviceReturnsTheNormAsAFloat32Scalar) {
  for (const double max_norm : {0.0, 0.3, 1e3}) {
    const auto ours = params_with_grads(6, 2.0);
    const auto theirs = clone_with_grads(ours);
    const at::Tensor norm = clip_grad_norm_on_device(ours, max_norm);
    const double expected =
        torch::nn::utils::clip_grad_norm_(theirs, max_norm > 0 ? max_norm : 1e30);
    EXPECT_EQ(norm.dim(), 0);
    EXPECT_EQ(norm.scalar_type(), at::kFloat);
    EXPECT_EQ(norm.item<double>(), expected);
    for (size_t i = 0; i + 1 < ours.size(); ++i) {
      EXPECT_TRUE(ours[i].grad().equal(theirs[i].grad())) << max_norm << " param " << i;
    }
  }
}

TEST(OptimClip, OnDeviceNonFiniteNormScalesNothing) {
  for (const float bad : {NAN, INFINITY}) {
    const auto params = params_with_grads(7, 1.0);
    params[2].mutable_grad()[1][2][3] = bad;
    const auto copy = clone_with_grads(params);
    const at::Tensor norm = clip_grad_norm_on_device(params, 0.1);
    EXPECT_FALSE(std::isfinite(norm.item<double>()));
    EXPECT_TRUE(params[0].grad().equal(copy[0].grad()));
    EXPECT_TRUE(params[1].grad().equal(copy[1].grad()));
    const at::Tensor finite = at::isfinite(copy[2].grad());
    EXPECT_TRUE(params[2].grad().masked_select(finite).equal(copy[2].grad().masked_select(finite)));
  }
}

TEST(OptimClip, OnDeviceWithoutGradsGivesZero) {
  const at::Tensor norm = clip_grad_norm_on_device({at::zeros({2}).set_requires_grad(true)}, 1.0);
  EXPECT_EQ(norm.dim(), 0);
  EXPECT_EQ(norm.scalar_type(), at::kFloat);
  EXPECT_EQ(norm.item<float>(), 0.0f);
  EXPECT_EQ(clip_grad_norm_on_device({}, 1.0).item<float>(), 0.0f);
  EXPECT_THROW(clip_grad_norm_on_device({}, -1.0), Error);
}

}  // namespace
}  // namespace qtrain

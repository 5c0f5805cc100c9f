// The INT4 representations of a QA-LoRA merge, on synthetic weights: GPTQ's fitted groups
// (export/gptq_fit.h) and the exact Q4_1 blocks (export/qalora_q4_1.h), each checked against the
// merged weights s * (q - z) + D computed here.
#include "core/error.h"
#include "export/gptq_fit.h"
#include "export/qalora_int4.h"
#include "export/qalora_q4_1.h"
#include "formats/gptq/gptq_layout.h"
#include "quant/ggml/q4_1.h"
#include "quant/int4_group.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace qtrain {
namespace {

// A projection [out, in] with an update D [out, in/g]: `steps` scales D relative to each group's
// scale (uniform in +-steps/2 steps).
QaLoraInt4Weight synthetic(int64_t out, int64_t in, int64_t g, double steps, uint64_t seed) {
  at::manual_seed(seed);
  QaLoraInt4Weight w;
  w.original = at::randn({out, in}) * 0.02;
  w.base = quantize_int4_group(w.original, g);
  w.delta = (at::rand({out, in / g}) - 0.5) * steps * w.base.scales;
  return w;
}

// sum e^2 + (sum e)^2 per group of the solution against `merged`: [out * groups].
at::Tensor cost(const GptqFit& fit, const at::Tensor& merged, int64_t g) {
  const at::Tensor e = (fit.scales.repeat_interleave(g, 1) *
                            (fit.codes.to(at::kFloat) - fit.zeros.repeat_interleave(g, 1)) -
                        merged)
                           .reshape({-1, g});
  return e.square().sum(-1) + e.sum(-1).square();
}

void expect_valid(const GptqFit& fit) {
  EXPECT_TRUE((fit.codes <= 15).all().item<bool>());
  EXPECT_TRUE(at::equal(fit.zeros, fit.zeros.round()));
  EXPECT_TRUE(((fit.zeros >= 1) & (fit.zeros <= 16)).all().item<bool>());
  EXPECT_TRUE(at::equal(fit.scales, fit.scales.to(at::kHalf).to(at::kFloat)));
  EXPECT_TRUE((fit.scales >= kGptqMinScale).all().item<bool>());
}

TEST(GptqFit, KeepsEveryGroupsMeanAndNeverCostsMoreThanRoundingTheZeros) {
  for (double steps : {0.8, 6.0}) {  // updates below half a step (typical) and larger ones
    const int64_t g = 32;
    const QaLoraInt4Weight w = synthetic(24, 256, g, steps, 11);
    const at::Tensor merged = w.merged();
    GptqFitStats stats;
    const GptqFit rounded =
        gptq_round_zeros(w.base.unpacked_codes(), w.base.scales, w.base.zeros, w.delta, &stats);
    const GptqFit fit = fit_gptq_groups(merged, w.merged_original(), g, rounded, &stats);
    expect_valid(fit);
    EXPECT_TRUE((cost(fit, merged, g) <= cost(rounded, merged, g)).all().item<bool>());
    // Each group's mean (where the update lives) within one step over the group of the merged
    // one: a code moved by one step changes it by s/g, and the fit moves codes until the group's
    // sum is within about half a step (the squared error of a move can outweigh the rest).
    const at::Tensor mean_error =
        (gptq_fit_dequantize(fit, g) - merged).view({24, 256 / g, g}).mean(-1).abs();
    EXPECT_TRUE((mean_error <= fit.scales / g + 1e-9).all().item<bool>())
        << "worst mean error in steps " << (mean_error / fit.scales).max().item<double>() * g;
    const at::Tensor rounded_mean =
        (gptq_fit_dequantize(rounded, g) - merged).view({24, 256 / g, g}).mean(-1).abs();
    std::printf(
        "update of +-%.1f/2 steps: group means missed by RMS %.3g (rounded zeros %.3g); "
        "weights by %.3g (%.3g); %lld of %lld groups refit, %lld updates dropped by "
        "rounding\n",
        steps, mean_error.square().mean().sqrt().item<double>(),
        rounded_mean.square().mean().sqrt().item<double>(),
        std::sqrt(stats.sse_fitted / stats.weights), std::sqrt(stats.sse_rounded / stats.weights),
        static_cast<long long>(stats.refit_groups), static_cast<long long>(stats.groups),
        static_cast<long long>(stats.dropped_rounded));
    EXPECT_LT(mean_error.square().mean().item<double>(),
              rounded_mean.square().mean().item<double>() / 100);
    EXPECT_EQ(stats.groups, 24 * 256 / g);
    EXPECT_NEAR(stats.sse_fitted,
                (gptq_fit_dequantize(fit, g) - merged).square().sum().item<double>(), 1e-9);
  }
}

TEST(GptqFit, AnUpdateOfWholeStepsIsHeldExactly) {
  const int64_t g = 64;
  QaLoraInt4Weight w = synthetic(8, 256, g, 0, 3);
  w.base.scales = w.base.scales.to(at::kHalf).to(at::kFloat);  // fp16 scales: nothing to round
  const at::Tensor steps = at::randint(-2, 3, w.base.scales.sizes()).to(at::kFloat);
  w.delta = steps * w.base.scales;
  // Zeros that stay inside 1..16 after the move.
  const at::Tensor merged = w.merged();
  const GptqFit rounded =
      gptq_round_zeros(w.base.unpacked_codes(), w.base.scales, w.base.zeros, w.delta);
  const GptqFit fit = fit_gptq_groups(merged, w.merged_original(), g, rounded);
  const at::Tensor inside = ((w.base.zeros - steps) >= 1) & ((w.base.zeros - steps) <= 16);
  const at::Tensor error = (gptq_fit_dequantize(fit, g) - merged).abs().view({8, 256 / g, g});
  const at::Tensor group_error = std::get<0>(error.max(-1));
  EXPECT_TRUE((group_error.masked_select(inside) <= 1e-6 * w.base.scales.masked_select(inside))
                  .all()
                  .item<bool>());
  EXPECT_GT(inside.sum().item<int64_t>(), 20);
}

TEST(GptqFit, NearZeroGroupsGetTheFloorScaleNeverZero) {
  const int64_t g = 32;
  QaLoraInt4Weight w = synthetic(8, 64, g, 0.5, 5);
  w.original.narrow(0, 0, 2).mul_(1e-6);  // weights near 1e-8: fp16 would round s to 0
  w.base = quantize_int4_group(w.original, g);
  w.delta = w.delta * 0;
  const at::Tensor merged = w.merged();
  GptqFitStats stats;
  const GptqFit rounded =
      gptq_round_zeros(w.base.unpacked_codes(), w.base.scales, w.base.zeros, w.delta, &stats);
  EXPECT_TRUE((rounded.scales >= kGptqMinScale).all().item<bool>());
  const GptqFit fit = fit_gptq_groups(merged, w.merged_original(), g, rounded, &stats);
  expect_valid(fit);
  EXPECT_EQ(stats.floored_scales, 4);  // 2 rows x 2 groups
  const at::Tensor tiny_error = (gptq_fit_dequantize(fit, g) - merged).narrow(0, 0, 2).abs();
  EXPECT_LE(tiny_error.max().item<double>(), 1e-6);  // they round to zero: |w| ~ 1e-8
}

TEST(GptqFit, AnOutlierGroupIsRescaledInsteadOfClamped) {
  const int64_t g = 32;
  QaLoraInt4Weight w = synthetic(8, 64, g, 0, 9);
  // The update moves a group by 20 steps: its zero z - D/s leaves 1..16 and rounding clamps it.
  w.delta = at::zeros_like(w.delta);
  w.delta[3][1] = 20 * w.base.scales[3][1].item<float>();
  const at::Tensor merged = w.merged();
  GptqFitStats stats;
  const GptqFit rounded =
      gptq_round_zeros(w.base.unpacked_codes(), w.base.scales, w.base.zeros, w.delta, &stats);
  EXPECT_EQ(stats.clamped_rounded, 1);
  const GptqFit fit = fit_gptq_groups(merged, w.merged_original(), g, rounded, &stats);
  const at::Tensor group = merged[3].narrow(0, g, g);
  const double fitted =
      (gptq_fit_dequantize(fit, g)[3].narrow(0, g, g) - group).abs().max().item<double>();
  const double clamped =
      (gptq_fit_dequantize(rounded, g)[3].narrow(0, g, g) - group).abs().max().item<double>();
  // The fit takes a larger scale that reaches the moved values: no weight is off by more than a
  // step (half a step of rounding, then codes moved to bring the group's sum back).
  EXPECT_LE(fitted, fit.scales[3][1].item<double>());
  EXPECT_LT(fitted, clamped / 4);
}

TEST(GptqFit, PackedFilesDequantizeToTheFitBitForBit) {
  const int64_t g = 32;
  const QaLoraInt4Weight w = synthetic(16, 128, g, 1.0, 13);
  const GptqFit rounded =
      gptq_round_zeros(w.base.unpacked_codes(), w.base.scales, w.base.zeros, w.delta);
  const GptqFit fit = fit_gptq_groups(w.merged(), w.merged_original(), g, rounded);
  const GptqProjection p = pack_gptq_projection(fit.codes, fit.zeros, fit.scales, g);
  EXPECT_TRUE(at::equal(dequantize_gptq_projection(p), gptq_fit_dequantize(fit, g)));
}

// The export runs the search on a GPU when there is one: the same choices up to the order of
// float32 sums (a near tie may go the other way), so the same cost per group to 1e-5.
TEST(GptqFit, CudaSearchCostsWhatTheCpuSearchCosts) {
  if (!at::hasCUDA() || at::getNumGPUs() == 0) GTEST_SKIP() << "no CUDA GPU";
  const int64_t g = 32;
  const QaLoraInt4Weight w = synthetic(64, 512, g, 1.0, 21);
  const at::Tensor merged = w.merged();
  const GptqFit rounded =
      gptq_round_zeros(w.base.unpacked_codes(), w.base.scales, w.base.zeros, w.delta);
  const GptqFit cpu = fit_gptq_groups(merged, w.merged_original(), g, rounded);
  const c10::Device cuda(c10::kCUDA);
  const GptqFit on_gpu =
      fit_gptq_groups(merged.to(cuda), w.merged_original().to(cuda), g,
                      {rounded.codes.to(cuda), rounded.zeros.to(cuda), rounded.scales.to(cuda)});
  const GptqFit gpu = {on_gpu.codes.cpu(), on_gpu.zeros.cpu(), on_gpu.scales.cpu()};
  expect_valid(gpu);
  const at::Tensor c_cpu = cost(cpu, merged, g), c_gpu = cost(gpu, merged, g);
  EXPECT_TRUE((c_gpu <= c_cpu * (1 + 1e-5) + 1e-12).all().item<bool>());
  EXPECT_TRUE((c_cpu <= c_gpu * (1 + 1e-5) + 1e-12).all().item<bool>());
  std::printf("CUDA fit: %lld of %lld groups chose the same codes as the CPU fit\n",
              static_cast<long long>(
                  at::eq(gpu.codes, cpu.codes).view({-1, g}).all(-1).sum().item<int64_t>()),
              static_cast<long long>(64 * 512 / g));
}

TEST(QaLoraQ4_1, HoldsTheMergeToFp16RoundingForGroupsOf32To128) {
  for (int64_t g : {32, 64, 128}) {
    const QaLoraInt4Weight w = synthetic(12, 256, g, 3.0, 17 + g);
    Q4_1MergeStats stats;
    const at::Tensor bytes = encode_qalora_q4_1(w, &stats);
    ASSERT_EQ(bytes.sizes(), (std::vector<int64_t>{12, 256 / 32 * 20}));
    EXPECT_EQ(stats.blocks, 12 * 256 / 32);
    at::Tensor decoded = at::empty({12, 256}, at::kFloat);
    dequantize_q4_1(bytes.contiguous().data_ptr<uint8_t>(), decoded.data_ptr<float>(), 12 * 256);
    const at::Tensor merged = w.merged();
    // d = fp16(s): 2^-11 s off per step, up to 15 steps; m: 2^-11 of its size, at most the
    // block's largest |w| plus 15 steps.
    const at::Tensor s = w.base.scales.repeat_interleave(g / 32, 1);
    const at::Tensor block_max = std::get<0>(merged.abs().view({12, 8, 32}).max(-1));
    const at::Tensor bound = std::ldexp(1.0, -11) * (30 * s + block_max) + 1e-7;
    const at::Tensor error = std::get<0>((decoded - merged).abs().view({12, 8, 32}).max(-1));
    EXPECT_TRUE((error <= bound).all().item<bool>())
        << "g " << g << ": worst error / bound " << (error / bound).max().item<double>();
    EXPECT_NEAR(stats.max_error, error.max().item<double>(), 1e-9);
    // The codes are training's: nibble j of a block's 16 bytes is value j, high nibble j + 16.
    const at::Tensor qs = bytes.view({12, 8, 20}).narrow(2, 4, 16);
    const at::Tensor codes = at::cat({qs.bitwise_and(0xF), qs.bitwise_right_shift(4)}, -1);
    EXPECT_TRUE(at::equal(codes.reshape({12, 256}), w.base.unpacked_codes())) << "g " << g;
  }
}

TEST(QaLoraQ4_1, RefusesGroupsThatAreNotWholeBlocks) {
  QaLoraInt4Weight w = synthetic(8, 96, 32, 1.0, 1);
  w.base.group_size = 48;
  w.delta = at::zeros({8, 2});
  try {
    encode_qalora_q4_1(w);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("multiple of 32"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qtrain

// Quantization error of the formats at blocksize 64 on a Gaussian and on two heavy-tailed
// distributions, against a plain absmax uniform INT4 (15 levels, -7..7). Prints the figures.
#include "quant/blockwise.h"
#include "quant/codebooks.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <iomanip>
#include <iostream>
#include <string>

namespace qtrain {
namespace {

constexpr int64_t kBlocksize = 64;
constexpr int64_t kN = 1 << 20;

double mse(const at::Tensor& x, const at::Tensor& y) {
  return (x.to(at::kDouble) - y.to(at::kDouble)).pow(2).mean().item<double>();
}

double mse_4bit(const at::Tensor& x, QuantType type) {
  auto [packed, absmax] = quantize_4bit(x, type, kBlocksize);
  const at::Tensor code = type == QuantType::kNF4 ? nf4_code() : fp4_code();
  return mse(x, dequantize_4bit(packed, absmax, code, x.numel(), kBlocksize, at::kFloat));
}

double mse_int8(const at::Tensor& x) {
  auto [q, absmax] = quantize_int8(x, kBlocksize);
  return mse(x, dequantize_int8(q, absmax, kBlocksize, at::kFloat));
}

// Symmetric uniform 4-bit: q = round(x / absmax * 7) in [-7, 7], x' = q * absmax / 7.
double mse_uniform_int4(const at::Tensor& x) {
  at::Tensor blocks = x.view({-1, kBlocksize});
  at::Tensor absmax = blocks.abs().amax(1, true);
  at::Tensor scale = at::where(absmax > 0, absmax / 7, at::ones_like(absmax));
  at::Tensor q = (blocks / scale).round().clamp(-7, 7);  // round half to even; ties are measure 0
  return mse(x, (q * scale).view(-1));
}

struct Distribution {
  std::string name;
  at::Tensor sample;
};

std::vector<Distribution> distributions() {
  at::manual_seed(42);
  const at::Tensor normal = at::randn({kN});
  // Student-t, 3 degrees of freedom: z / sqrt(chi2_3 / 3).
  const at::Tensor chi2 = at::randn({3, kN}).pow(2).sum(0);
  const at::Tensor student = at::randn({kN}) / (chi2 / 3).sqrt();
  // Laplace(0, 1): sign * Exponential(1).
  const at::Tensor laplace =
      at::empty({kN}).exponential_() * (at::rand({kN}) < 0.5).to(at::kFloat).mul(2).sub(1);
  return {{"normal N(0,1)", normal}, {"Student-t (3 dof)", student}, {"Laplace(0,1)", laplace}};
}

TEST(QuantErrorTest, Nf4BeatsFp4AndUniformInt4AndInt8IsFarBelow) {
  std::cout << "MSE at blocksize " << kBlocksize << " over " << kN << " elements\n"
            << std::left << std::setw(20) << "distribution" << std::setw(14) << "NF4"
            << std::setw(14) << "FP4" << std::setw(14) << "INT4 (unif.)" << std::setw(14) << "INT8"
            << "\n";
  for (const Distribution& d : distributions()) {
    const double nf4 = mse_4bit(d.sample, QuantType::kNF4);
    const double fp4 = mse_4bit(d.sample, QuantType::kFP4);
    const double int4 = mse_uniform_int4(d.sample);
    const double int8 = mse_int8(d.sample);
    std::cout << std::setw(20) << d.name << std::scientific << std::setprecision(4) << std::setw(14)
              << nf4 << std::setw(14) << fp4 << std::setw(14) << int4 << std::setw(14) << int8
              << std::defaultfloat << "\n";
    EXPECT_LT(nf4, fp4) << d.name;
    EXPECT_LT(nf4, int4) << d.name;
    EXPECT_LT(int8 * 100, nf4) << d.name;
  }
}

}  // namespace
}  // namespace qtrain

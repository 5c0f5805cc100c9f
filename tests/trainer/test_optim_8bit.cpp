// The 8-bit blockwise AdamW: one step at a time against a float64 re-statement of bitsandbytes'
// algorithm (reference/formats.md §2), its special cases (sign nudge, NaN/Inf gradients, all-zero
// blocks, small parameters), the device-independent composite path, and how closely it tracks
// 32-bit AdamW.
#include "quant/codebooks.h"
#include "tests/support/test_support.h"
#include "trainer/optim/adam_8bit_kernel.h"
#include "trainer/optim/optimizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

namespace qtrain {
namespace {

AdamWOptions options_8bit() {
  AdamWOptions o;
  o.lr = 1e-2;
  o.beta1 = 0.9;
  o.beta2 = 0.999;
  o.eps = 1e-8;
  o.weight_decay = 0.1;
  return o;
}

// The hyperparameters as the kernels see them: bitsandbytes passes them as float32 (1 - beta2 is
// then 0.000999987..., 1.3e-5 away from 0.001), so the float64 references use the same values.
AdamWOptions as_float32(const AdamWOptions& o) {
  auto f = [](double x) { return static_cast<double>(static_cast<float>(x)); };
  return {f(o.lr), f(o.beta1), f(o.beta2), f(o.eps), f(o.weight_decay)};
}

std::vector<double> to_doubles(const at::Tensor& t) {
  const at::Tensor d = t.reshape({-1}).to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

std::vector<uint8_t> to_bytes(const at::Tensor& t) {
  const at::Tensor b = t.reshape({-1}).contiguous();
  return std::vector<uint8_t>(b.data_ptr<uint8_t>(), b.data_ptr<uint8_t>() + b.numel());
}

// The blockwise state of one parameter, read back from the state dict.
struct Blockwise {
  std::vector<double> param;
  std::vector<uint8_t> codes1, codes2;
  std::vector<double> absmax1, absmax2;
};

Blockwise read_state(const Optimizer& opt, const std::string& name, const at::Tensor& param) {
  const auto s = opt.state_dict();
  return {to_doubles(param), to_bytes(s.at(name + ".exp_avg.codes")),
          to_bytes(s.at(name + ".exp_avg_sq.codes")), to_doubles(s.at(name + ".exp_avg.absmax")),
          to_doubles(s.at(name + ".exp_avg_sq.absmax"))};
}

// Float64 re-statement of one blockwise step: decode, moments, parameter update with bnb's
// folded bias corrections and decay after the step, per-block absmax, nearest code (ties low),
// sign nudge. `normalized1/2` receive the exact scaled values for the borderline check.
Blockwise reference_step(const Blockwise& in, const std::vector<double>& grad,
                         const AdamWOptions& options, int64_t t, std::vector<double>* normalized1,
                         std::vector<double>* normalized2) {
  const AdamWOptions o = as_float32(options);
  const std::vector<double> q1 = to_doubles(dynamic_code_signed());
  const std::vector<double> q2 = to_doubles(dynamic_code_unsigned());
  const size_t n = in.param.size();
  const double c1 = 1 - std::pow(o.beta1, double(t));
  const double c2 = std::sqrt(1 - std::pow(o.beta2, double(t)));
  std::vector<double> m(n), v(n);
  Blockwise out = in;
  for (size_t i = 0; i < n; ++i) {
    const size_t b = i / 256;
    if (std::isfinite(grad[i])) {
      m[i] = q1[in.codes1[i]] * in.absmax1[b] * o.beta1 + (1 - o.beta1) * grad[i];
      v[i] = q2[in.codes2[i]] * in.absmax2[b] * o.beta2 + (1 - o.beta2) * grad[i] * grad[i];
      out.param[i] += -o.lr * c2 / c1 * m[i] / (std::sqrt(v[i]) + c2 * o.eps);
      if (o.weight_decay > 0) out.param[i] *= 1 - o.lr * o.weight_decay;
    } else {
      m[i] = v[i] = 0;
    }
  }
  auto nearest = [](const std::vector<double>& table, double x) {
    int best = 0;
    for (int k = 1; k < 256; ++k) {
      if (std::fabs(table[k] - x) < std::fabs(table[best] - x)) best = k;
    }
    return best;
  };
  normalized1->assign(n, 0);
  normalized2->assign(n, 0);
  for (size_t b = 0; b * 256 < n; ++b) {
    double max1 = 0, max2 = 0;
    for (size_t i = b * 256; i < std::min(n, b * 256 + 256); ++i) {
      max1 = std::max(max1, std::fabs(m[i]));
      max2 = std::max(max2, std::fabs(v[i]));
    }
    out.absmax1[b] = max1;
    out.absmax2[b] = max2;
    for (size_t i = b * 256; i < std::min(n, b * 256 + 256); ++i) {
      (*normalized1)[i] = m[i] / max1;
      (*normalized2)[i] = v[i] / max2;
      int code1 = nearest(q1, m[i] / max1);
      if (std::signbit(q1[code1]) != std::signbit(m[i])) code1 += m[i] > 0 ? 1 : -1;
      out.codes1[i] = static_cast<uint8_t>(code1);
      out.codes2[i] = static_cast<uint8_t>(nearest(q2, v[i] / max2));
    }
  }
  return out;
}

// True when x lies within `tol` of a midpoint between neighbouring code values: float32 and
// float64 may then round to different neighbours.
bool near_midpoint(const at::Tensor& code, double x, double tol) {
  const std::vector<double> q = to_doubles(code);
  for (int k = 0; k < 255; ++k) {
    if (std::fabs(x - 0.5 * (q[k] + q[k + 1])) <= tol) return true;
  }
  return false;
}

struct CodeComparison {
  int64_t borderline = 0;
  int64_t unexplained = 0;
};

CodeComparison compare_codes(const std::vector<uint8_t>& ours, const std::vector<uint8_t>& ref,
                             const std::vector<double>& normalized, const at::Tensor& code) {
  CodeComparison c;
  for (size_t i = 0; i < ours.size(); ++i) {
    if (ours[i] == ref[i]) continue;
    if (std::abs(int(ours[i]) - int(ref[i])) == 1 && near_midpoint(code, normalized[i], 1e-6)) {
      ++c.borderline;
    } else if (++c.unexplained <= 5) {
      ADD_FAILURE() << "element " << i << " code " << int(ours[i]) << " reference " << int(ref[i])
                    << " normalized " << normalized[i];
    }
  }
  return c;
}

// Parameters: within 2 float32 ulps of the reference plus 1e-5 of the step's update.
void expect_param_close(const std::vector<double>& ours, const std::vector<double>& ref,
                        const std::vector<double>& before) {
  ASSERT_EQ(ours.size(), ref.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    const double tolerance =
        2 * std::ldexp(std::fabs(ref[i]), -23) + 1e-5 * std::fabs(ref[i] - before[i]);
    ASSERT_LE(std::fabs(ours[i] - ref[i]), tolerance)
        << "param element " << i << ": " << ours[i] << " vs " << ref[i] << " (was " << before[i]
        << ")";
  }
}

void expect_close(const std::vector<double>& ours, const std::vector<double>& ref, double rel,
                  const std::string& what) {
  ASSERT_EQ(ours.size(), ref.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    ASSERT_LE(std::fabs(ours[i] - ref[i]), rel * std::fabs(ref[i]) + 1e-12)
        << what << " element " << i << ": " << ours[i] << " vs " << ref[i];
  }
}

TEST(Optim8bit, EachStepMatchesFloat64Restatement) {
  const AdamWOptions o = options_8bit();
  const int64_t n = 256 * 20 + 77;  // a partial last block
  at::manual_seed(1);
  at::Tensor param = at::randn({n}).set_requires_grad(true);
  auto opt = make_optimizer("adamw_8bit", {{"w", param}}, o);
  int64_t borderline = 0;
  for (int64_t t = 1; t <= 8; ++t) {
    at::Tensor grad = at::randn({n}) * (t % 3 == 0 ? 2.0 : 0.3);
    if (t == 5) {  // non-finite gradients zero the moments and leave the parameter alone
      grad[7] = NAN;
      grad[300] = INFINITY;
    }
    const Blockwise before = read_state(*opt, "w", param);
    std::vector<double> normalized1, normalized2;
    const Blockwise ref =
        reference_step(before, to_doubles(grad), o, t, &normalized1, &normalized2);
    param.mutable_grad() = grad;
    opt->step();
    const Blockwise after = read_state(*opt, "w", param);
    expect_param_close(after.param, ref.param, before.param);
    expect_close(after.absmax1, ref.absmax1, 1e-6, "absmax1");
    expect_close(after.absmax2, ref.absmax2, 1e-6, "absmax2");
    const CodeComparison c1 =
        compare_codes(after.codes1, ref.codes1, normalized1, dynamic_code_signed());
    const CodeComparison c2 =
        compare_codes(after.codes2, ref.codes2, normalized2, dynamic_code_unsigned());
    EXPECT_EQ(c1.unexplained + c2.unexplained, 0) << "step " << t;
    borderline += c1.borderline + c2.borderline;
    if (t == 5) {
      EXPECT_EQ(after.param[7], before.param[7]);
      EXPECT_EQ(after.param[300], before.param[300]);
      EXPECT_EQ(after.codes1[7], 127);  // m = 0
      EXPECT_EQ(after.codes2[300], 0);  // v = 0
    }
  }
  // Codes on a float32 rounding boundary may go either way; they must stay rare.
  EXPECT_LE(borderline, 3);
  std::printf("8-bit vs float64 re-statement: %lld borderline codes in 8 steps of %lld x 2\n",
              static_cast<long long>(borderline), static_cast<long long>(n));
}

// A negative m too small for the nearest nonzero code would decode as +0: its code moves to the
// smallest negative value. A positive one stays at 0 (same sign bit).
TEST(Optim8bit, TinyNegativeMomentKeepsItsSign) {
  AdamWOptions o = options_8bit();
  o.weight_decay = 0;
  at::Tensor param = at::zeros({4096}).set_requires_grad(true);
  auto opt = make_optimizer("adamw_8bit", {{"w", param}}, o);
  at::Tensor grad = at::zeros({4096});
  grad[0] = 1000.0;
  grad[1] = -1e-6;
  grad[2] = 1e-6;
  param.mutable_grad() = grad;
  opt->step();
  const auto codes = opt->state_dict().at("w.exp_avg.codes");
  const at::Tensor q = dynamic_code_signed();
  EXPECT_EQ(codes[0].item<int>(), 255);  // m / absmax = 1
  EXPECT_EQ(codes[1].item<int>(), 126);  // nudged from 127 (0.0) to the largest negative code
  EXPECT_LT(q[126].item<float>(), 0.0f);
  EXPECT_EQ(codes[2].item<int>(), 127);
}

// A block whose moments are all zero has absmax 0; like bnb's CUDA kernel its m codes become 255
// (NaN normalizes to code 0 = -0.99, whose sign is nudged away) and its v codes 0. Both decode
// to 0 and the parameters in it do not move.
TEST(Optim8bit, AllZeroBlockDecodesToZero) {
  AdamWOptions o = options_8bit();
  o.weight_decay = 0;
  at::manual_seed(2);
  at::Tensor param = at::randn({4096}).set_requires_grad(true);
  const at::Tensor before = param.detach().clone();
  auto opt = make_optimizer("adamw_8bit", {{"w", param}}, o);
  at::Tensor grad = at::randn({4096});
  grad.slice(0, 512, 768).zero_();
  param.mutable_grad() = grad;
  opt->step();
  const auto s = opt->state_dict();
  EXPECT_EQ(s.at("w.exp_avg.absmax")[2].item<float>(), 0.0f);
  EXPECT_TRUE(s.at("w.exp_avg.codes").slice(0, 512, 768).eq(255).all().item<bool>());
  EXPECT_TRUE(s.at("w.exp_avg_sq.codes").slice(0, 512, 768).eq(0).all().item<bool>());
  EXPECT_TRUE(param.detach().slice(0, 512, 768).equal(before.slice(0, 512, 768)));
  grad = at::randn({4096});  // a later step decodes the block as zeros and proceeds normally
  param.mutable_grad() = grad;
  opt->step();
  EXPECT_GT(opt->state_dict().at("w.exp_avg.absmax")[2].item<float>(), 0.0f);
}

// Parameters below 4096 elements keep float32 moments (bnb's 32-bit Adam kernel); each step
// against float64 from the same state.
TEST(Optim8bit, SmallParametersKeepFloat32States) {
  const AdamWOptions o = as_float32(options_8bit());
  at::manual_seed(3);
  at::Tensor param = at::randn({4095}).set_requires_grad(true);
  auto opt = make_optimizer("adamw_8bit", {{"w", param}}, o);
  for (int t = 1; t <= 5; ++t) {
    const auto before = opt->state_dict();
    const std::vector<double> p0 = to_doubles(param);
    const std::vector<double> m0 = to_doubles(before.at("w.exp_avg"));
    const std::vector<double> v0 = to_doubles(before.at("w.exp_avg_sq"));
    const at::Tensor grad = at::randn({4095});
    const std::vector<double> g = to_doubles(grad);
    param.mutable_grad() = grad;
    opt->step();
    const auto after = opt->state_dict();
    const std::vector<double> p1 = to_doubles(param);
    const std::vector<double> m1 = to_doubles(after.at("w.exp_avg"));
    const std::vector<double> v1 = to_doubles(after.at("w.exp_avg_sq"));
    const double c1 = 1 - std::pow(o.beta1, t), c2 = std::sqrt(1 - std::pow(o.beta2, t));
    for (size_t i = 0; i < g.size(); ++i) {
      const double m = m0[i] * o.beta1 + (1 - o.beta1) * g[i];
      const double v = v0[i] * o.beta2 + (1 - o.beta2) * g[i] * g[i];
      const double p =
          (p0[i] - o.lr * c2 / c1 * m / (std::sqrt(v) + c2 * o.eps)) * (1 - o.lr * o.weight_decay);
      // A few float32 roundings of the terms involved; the parameter also inherits m's error
      // through the update.
      const double m_error = 4e-7 * (std::fabs(m0[i]) + std::fabs(0.1 * g[i]));
      ASSERT_LE(std::fabs(m1[i] - m), m_error);
      ASSERT_LE(std::fabs(v1[i] - v), 4e-7 * (v0[i] + 0.001 * g[i] * g[i]));
      const double update_error = o.lr * c2 / c1 * m_error / (std::sqrt(v) + c2 * o.eps);
      ASSERT_LE(std::fabs(p1[i] - p),
                4e-7 * (std::fabs(p0[i]) + std::fabs(p - p0[i])) + update_error)
          << "step " << t << " element " << i;
    }
  }
  const auto s = opt->state_dict();
  ASSERT_EQ(s.count("w.exp_avg"), 1u);
  EXPECT_EQ(s.at("w.exp_avg").scalar_type(), at::kFloat);
  EXPECT_EQ(s.count("w.exp_avg.codes"), 0u);
}

// The composite path (tensor operations + quant/blockwise.h kernels, used off the CPU) computes
// the same moments, absmax and codes as the fused CPU loop, bit for bit. Parameters may differ in
// the last place: ATen's vectorized CPU sqrt is not correctly rounded (it differs from sqrtf on
// ~20% of inputs), the fused loop's (like CUDA's) is: the updates differ in the last bit and
// the parameters by a few ulps after 6 steps.
TEST(Optim8bit, CompositePathEqualsFusedLoop) {
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const int64_t n = 256 * 9 + 31;
    at::manual_seed(4);
    at::Tensor p_fused = at::randn({n}).to(dtype);
    at::Tensor p_comp = p_fused.clone();
    at::Tensor c1f = at::zeros({n}, at::kByte), c2f = at::zeros({n}, at::kByte);
    at::Tensor a1f = at::zeros({10}), a2f = at::zeros({10});
    at::Tensor c1c = c1f.clone(), c2c = c2f.clone(), a1c = a1f.clone(), a2c = a2f.clone();
    const at::Tensor q1 = dynamic_code_signed(), q2 = dynamic_code_unsigned();
    for (int64_t t = 1; t <= 6; ++t) {
      at::Tensor grad = (at::randn({n}) * 0.1).to(dtype);
      if (t == 3) grad[5] = NAN;
      const Adam8bitStep s{1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, t};
      adam_8bit_blockwise_update_fused_cpu(p_fused, grad, c1f, c2f, a1f, a2f, q1, q2, s);
      adam_8bit_blockwise_update_composite(p_comp, grad, c1c, c2c, a1c, a2c, q1, q2, s);
    }
    const at::Tensor p32 = p_fused.to(at::kFloat);
    const double ulp = dtype == at::kFloat ? std::ldexp(1.0, -23) : std::ldexp(1.0, -7);
    EXPECT_TRUE(
        (p32 - p_comp.to(at::kFloat)).abs().le((p32.abs() + 0.1) * (4 * ulp)).all().item<bool>())
        << dtype << " " << testing::max_abs_diff(p_fused, p_comp);
    EXPECT_TRUE(c1f.equal(c1c)) << dtype << " " << c1f.ne(c1c).sum().item<int64_t>();
    EXPECT_TRUE(c2f.equal(c2c)) << dtype << " " << c2f.ne(c2c).sum().item<int64_t>();
    EXPECT_TRUE(a1f.equal(a1c)) << dtype;
    EXPECT_TRUE(a2f.equal(a2c)) << dtype;
  }
}

// On a noisy quadratic, 8-bit states follow 32-bit AdamW closely over 100 steps (the gap is
// ~3% of the distance travelled; bitsandbytes' own AdamW8bit shows the same on this problem).
TEST(Optim8bit, TracksFloat32AdamW) {
  AdamWOptions o = options_8bit();
  o.lr = 1e-3;
  o.weight_decay = 0.01;
  at::manual_seed(5);
  const at::Tensor target = at::randn({64, 128});
  const at::Tensor start = at::randn({64, 128});
  at::Tensor p8 = start.clone().set_requires_grad(true);
  at::Tensor p32 = start.clone().set_requires_grad(true);
  auto opt8 = make_optimizer("adamw_8bit", {{"w", p8}}, o);
  auto opt32 = make_optimizer("adamw", {{"w", p32}}, o);
  for (int t = 0; t < 100; ++t) {
    const at::Tensor noise = at::randn({64, 128}) * 0.5;
    p8.mutable_grad() = p8.detach() - target + noise;
    p32.mutable_grad() = p32.detach() - target + noise;
    opt8->step();
    opt32->step();
  }
  const double moved = (p32.detach() - start).norm().item<double>();
  const double gap = (p8.detach() - p32.detach()).norm().item<double>();
  std::printf("8-bit vs 32-bit AdamW after 100 steps: |p8 - p32| / |p32 - p0| = %.3e\n",
              gap / moved);
  EXPECT_LT(gap / moved, 0.05);
}

TEST(Optim8bit, StateBytesAreExact) {
  at::Tensor big = at::zeros({1000, 10}).set_requires_grad(true);  // 10000 elements, 40 blocks
  at::Tensor small = at::zeros({100}).set_requires_grad(true);
  auto opt = make_optimizer("adamw_8bit", {{"big", big}, {"small", small}}, options_8bit());
  EXPECT_EQ(opt->state_bytes(), 2 * 10000 + 2 * 40 * 4 + 2 * 100 * 4);
  auto plain = make_optimizer("adamw", {{"big", big}, {"small", small}}, options_8bit());
  EXPECT_EQ(plain->state_bytes(), 8 * 10100);
}

}  // namespace
}  // namespace qtrain

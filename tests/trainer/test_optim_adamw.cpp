// AdamW (32-bit states) and its paged twin against LibTorch's torch::optim::AdamW and PyTorch's
// torch.optim.AdamW.
#include "formats/safetensors/safetensors.h"
#include "tests/support/test_support.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/optimizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace qtrain {
namespace {

using testing::max_abs_diff;

constexpr int kSteps = 20;

AdamWOptions test_options() {
  AdamWOptions o;
  o.lr = 1e-2;
  o.beta1 = 0.9;
  o.beta2 = 0.99;
  o.eps = 1e-8;
  o.weight_decay = 0.05;
  return o;
}

// Gradients [kSteps][shape] from a fixed seed, some steps with larger or sign-flipped values.
std::vector<at::Tensor> make_grads(at::IntArrayRef shape, uint64_t seed) {
  at::manual_seed(seed);
  std::vector<at::Tensor> grads;
  for (int k = 0; k < kSteps; ++k) grads.push_back(at::randn(shape) * (k % 5 == 0 ? 3.0 : 0.5));
  return grads;
}

at::Tensor make_param(at::IntArrayRef shape, uint64_t seed, at::ScalarType dtype = at::kFloat) {
  at::manual_seed(seed);
  return at::randn(shape).to(dtype).set_requires_grad(true);
}

// max |a - b| / max |b|: the error relative to the tensor's scale. (LibTorch's AdamW updates m
// as m*b1 + (1-b1)*g where PyTorch and qtrain use lerp; the last-ulp differences accumulate to
// ~3e-8 absolute, which is a large elementwise ratio only for values that crossed zero.)
double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor a64 = a.detach().to(at::kDouble);
  const at::Tensor b64 = b.detach().to(at::kDouble);
  return (a64 - b64).abs().max().item<double>() / b64.abs().max().item<double>();
}

TEST(OptimAdamW, MatchesLibTorchAdamW) {
  const AdamWOptions o = test_options();
  const auto grads = make_grads({37, 19}, 1);
  at::Tensor ours = make_param({37, 19}, 2);
  at::Tensor theirs = ours.detach().clone().set_requires_grad(true);
  auto opt = make_optimizer("adamw", {{"w", ours}}, o);
  double worst = 0;
  torch::optim::AdamW reference({theirs}, torch::optim::AdamWOptions(o.lr)
                                              .betas({o.beta1, o.beta2})
                                              .eps(o.eps)
                                              .weight_decay(o.weight_decay));
  for (int k = 0; k < kSteps; ++k) {
    ours.mutable_grad() = grads[k].clone();
    theirs.mutable_grad() = grads[k].clone();
    opt->step();
    reference.step();
    worst = std::max(worst, max_rel_diff(ours, theirs));
  }
  std::printf("AdamW vs torch::optim::AdamW, %d steps: max rel diff %.2e\n", kSteps, worst);
  EXPECT_EQ(opt->steps(), kSteps);
  const auto state = opt->state_dict();
  EXPECT_EQ(state.at("w.step").item<int64_t>(), kSteps);
  // torch::optim keys its state by the parameter's TensorImpl.
  const auto& their_state = static_cast<torch::optim::AdamWParamState&>(
      *reference.state().at(theirs.unsafeGetTensorImpl()));
  EXPECT_LE(max_rel_diff(state.at("w.exp_avg"), their_state.exp_avg()), 1e-5);
  EXPECT_LE(max_rel_diff(state.at("w.exp_avg_sq"), their_state.exp_avg_sq()), 1e-5);
}

// PyTorch's torch.optim.AdamW runs the same ATen operations in the same order: bit-equal.
TEST(OptimAdamW, MatchesPyTorchAdamWBitForBit) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  const AdamWOptions o = test_options();
  const auto grads = make_grads({64, 33}, 3);
  at::Tensor param = make_param({64, 33}, 4);
  testing::ScratchDir dir("optim-adamw");
  NamedTensors inputs{{"param", param.detach().clone()}};
  for (int k = 0; k < kSteps; ++k) inputs.emplace_back("grad." + std::to_string(k + 1), grads[k]);
  write_safetensors(dir.file("in.safetensors"), inputs);
  std::string log;
  ASSERT_EQ(testing::run_reference_script("optim_torch_adamw.py",
                                          {dir.file("in.safetensors"), dir.file("out.safetensors"),
                                           "0.01", "0.9", "0.99", "1e-08", "0.05"},
                                          &log),
            0)
      << log;
  const auto reference = SafetensorsFile::open(dir.file("out.safetensors"));

  auto opt = make_optimizer("adamw", {{"w", param}}, o);
  for (int k = 0; k < kSteps; ++k) {
    param.mutable_grad() = grads[k].clone();
    opt->step();
    ASSERT_TRUE(param.detach().equal(reference->tensor("param." + std::to_string(k + 1))))
        << "step " << k + 1 << " max diff "
        << max_abs_diff(param, reference->tensor("param." + std::to_string(k + 1)));
  }
  const auto state = opt->state_dict();
  EXPECT_TRUE(state.at("w.exp_avg").equal(reference->tensor("exp_avg")));
  EXPECT_TRUE(state.at("w.exp_avg_sq").equal(reference->tensor("exp_avg_sq")));
}

// A bf16 parameter keeps float32 states; one step equals the float32 step on its value, rounded
// once to bf16.
TEST(OptimAdamW, Bf16ParameterUpdatesInFloat32) {
  const AdamWOptions o = test_options();
  at::Tensor bf16 = make_param({8, 50}, 5, at::kBFloat16);
  at::Tensor f32 = bf16.detach().to(at::kFloat).set_requires_grad(true);
  auto opt16 = make_optimizer("adamw", {{"w", bf16}}, o);
  auto opt32 = make_optimizer("adamw", {{"w", f32}}, o);
  at::manual_seed(6);
  const at::Tensor grad = at::randn({8, 50}).to(at::kBFloat16);
  bf16.mutable_grad() = grad;
  f32.mutable_grad() = grad.to(at::kFloat);
  opt16->step();
  opt32->step();
  EXPECT_EQ(bf16.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(bf16.detach().equal(f32.detach().to(at::kBFloat16)));
  const auto s16 = opt16->state_dict();
  const auto s32 = opt32->state_dict();
  EXPECT_EQ(s16.at("w.exp_avg").scalar_type(), at::kFloat);
  EXPECT_TRUE(s16.at("w.exp_avg").equal(s32.at("w.exp_avg")));
  EXPECT_TRUE(s16.at("w.exp_avg_sq").equal(s32.at("w.exp_avg_sq")));
}

// On the CPU paged states are ordinary memory: identical results.
TEST(OptimAdamW, PagedEqualsPlainOnCpu) {
  for (const std::string kind : {"adamw", "adamw_8bit"}) {
    const auto grads = make_grads({70, 90}, 7);
    at::Tensor plain = make_param({70, 90}, 8);
    at::Tensor paged = plain.detach().clone().set_requires_grad(true);
    auto a = make_optimizer(kind, {{"w", plain}}, test_options());
    auto b = make_optimizer("paged_" + kind, {{"w", paged}}, test_options());
    for (int k = 0; k < kSteps; ++k) {
      plain.mutable_grad() = grads[k].clone();
      paged.mutable_grad() = grads[k].clone();
      a->step();
      b->step();
    }
    EXPECT_TRUE(plain.detach().equal(paged.detach())) << kind;
    const auto sa = a->state_dict();
    const auto sb = b->state_dict();
    ASSERT_EQ(sa.size(), sb.size());
    for (const auto& [key, t] : sa) EXPECT_TRUE(t.equal(sb.at(key))) << kind << " " << key;
  }
}

TEST(OptimAdamW, SkipsParametersWithoutGradAndZeroGradClears) {
  at::Tensor a = make_param({4, 4}, 9);
  at::Tensor b = make_param({4, 4}, 10);
  const at::Tensor b_before = b.detach().clone();
  auto opt = make_optimizer("adamw", {{"a", a}, {"b", b}}, test_options());
  a.mutable_grad() = at::ones({4, 4});
  opt->step();
  EXPECT_TRUE(b.detach().equal(b_before));
  const auto state = opt->state_dict();
  EXPECT_EQ(state.at("a.step").item<int64_t>(), 1);
  EXPECT_EQ(state.at("b.step").item<int64_t>(), 0);
  EXPECT_EQ(state.at("step").item<int64_t>(), 1);
  opt->zero_grad();
  EXPECT_FALSE(a.grad().defined());
}

TEST(OptimAdamW, LearningRateCanChangeBetweenSteps) {
  at::Tensor p = make_param({3, 3}, 11);
  at::Tensor q = p.detach().clone().set_requires_grad(true);
  AdamWOptions o = test_options();
  auto opt = make_optimizer("adamw", {{"p", p}}, o);
  o.lr = 0.5;
  auto reference = make_optimizer("adamw", {{"q", q}}, o);
  opt->set_lr(0.5);
  EXPECT_EQ(opt->lr(), 0.5);
  p.mutable_grad() = at::full({3, 3}, 0.25);
  q.mutable_grad() = at::full({3, 3}, 0.25);
  opt->step();
  reference->step();
  EXPECT_TRUE(p.detach().equal(q.detach()));
}

// Adapter-like parameters (LoRA A and B of a few modules, one bf16 pair) and their gradients.
NamedParameters adapter_params(uint64_t seed) {
  at::manual_seed(seed);
  NamedParameters out;
  for (const char* module : {"q_proj", "v_proj", "down_proj"}) {
    out.emplace_back(std::string(module) + ".lora_A", at::randn({8, 96}).set_requires_grad(true));
    out.emplace_back(std::string(module) + ".lora_B", at::randn({80, 8}).set_requires_grad(true));
  }
  out.emplace_back("up_proj.lora_A", at::randn({8, 64}).to(at::kBFloat16).set_requires_grad(true));
  return out;
}

NamedParameters clone_named(const NamedParameters& params) {
  NamedParameters out;
  for (const auto& [name, p] : params) {
    out.emplace_back(name, p.detach().clone().set_requires_grad(true));
  }
  return out;
}

void set_grads(NamedParameters& params, int step) {
  at::manual_seed(500 + step);
  for (auto& [name, p] : params) {
    p.mutable_grad() = (at::randn(p.sizes()) * (step % 7 == 0 ? 3.0 : 0.3)).to(p.scalar_type());
  }
  // One parameter sits a step out now and then (its own step count falls behind).
  if (step % 5 == 0) params[1].second.mutable_grad() = at::Tensor();
}

// Runs `steps` steps of AdamW with `kernel` over a copy of `init`; returns the optimizer.
std::unique_ptr<AdamW> run_kernel(NamedParameters& params, AdamWKernel kernel, int steps) {
  auto opt = std::make_unique<AdamW>(params, test_options(), /*paged=*/false, kernel);
  for (int step = 1; step <= steps; ++step) {
    set_grads(params, step);
    opt->step();
  }
  return opt;
}

// The multi-tensor _foreach_ form runs the same operations as the per-tensor loop: bit-equal.
TEST(OptimAdamW, ForEachEqualsPerTensorLoopBitForBit) {
  const NamedParameters init = adapter_params(20);
  NamedParameters loop = clone_named(init);
  NamedParameters foreach = clone_named(init);
  auto a = run_kernel(loop, AdamWKernel::kPerTensor, 50);
  auto b = run_kernel(foreach, AdamWKernel::kForEach, 50);
  for (size_t i = 0; i < init.size(); ++i) {
    EXPECT_TRUE(loop[i].second.detach().equal(foreach[i].second.detach())) << init[i].first;
  }
  const auto sa = a->state_dict();
  const auto sb = b->state_dict();
  for (const auto& [key, t] : sa) EXPECT_TRUE(t.equal(sb.at(key))) << key;
}

// at::_fused_adamw_ folds the same algorithm into one pass with other roundings (adamw_update.h):
// over 50 steps its float32 parameters and moments stay within a few float32 ulps (relative to
// each tensor's scale) of the per-tensor loop's; step counts and keys are identical.
TEST(OptimAdamW, FusedMatchesPerTensorLoopWithinRounding) {
  const NamedParameters init = adapter_params(21);
  NamedParameters loop = clone_named(init);
  NamedParameters fused = clone_named(init);
  auto a = run_kernel(loop, AdamWKernel::kPerTensor, 50);
  auto b = run_kernel(fused, AdamWKernel::kFused, 50);
  const auto sa = a->state_dict();
  const auto sb = b->state_dict();
  ASSERT_EQ(sa.size(), sb.size());
  double worst_param = 0, worst_state = 0;
  for (const auto& [key, t] : sa) {
    if (t.scalar_type() == at::kLong) {
      EXPECT_TRUE(t.equal(sb.at(key))) << key;
    } else {
      worst_state = std::max(worst_state, max_rel_diff(sb.at(key), t));
    }
  }
  for (size_t i = 0; i < init.size(); ++i) {
    const at::Tensor x = loop[i].second.detach(), y = fused[i].second.detach();
    if (x.scalar_type() == at::kBFloat16) {
      // Rounded from masters a few float32 ulps apart: at most one bf16 ulp of the element (or a
      // few float32 ulps of the tensor's scale, for elements near zero).
      const at::Tensor ulp =
          x.to(at::kFloat).abs() * std::ldexp(1.0, -7) + x.to(at::kFloat).abs().max() * 1e-6;
      EXPECT_TRUE((x.to(at::kFloat) - y.to(at::kFloat)).abs().le(ulp).all().item<bool>());
    } else {
      worst_param = std::max(worst_param, max_rel_diff(y, x));
    }
  }
  std::printf("fused vs per-tensor AdamW, 50 steps: max rel diff params %.2e, states %.2e\n",
              worst_param, worst_state);
  EXPECT_LE(worst_param, 1e-6);
  EXPECT_LE(worst_state, 1e-6);
}

// The fused kernel reads step counts from device tensors: a resumed run restores them.
TEST(OptimAdamW, FusedResumesBitExactly) {
  const NamedParameters init = adapter_params(22);
  NamedParameters straight = clone_named(init);
  auto a = run_kernel(straight, AdamWKernel::kFused, 7);
  NamedParameters resumed = clone_named(straight);
  AdamW b(resumed, test_options(), /*paged=*/false, AdamWKernel::kFused);
  b.load_state_dict(a->state_dict());
  for (int step = 8; step <= 12; ++step) {
    set_grads(straight, step);
    set_grads(resumed, step);
    a->step();
    b.step();
  }
  for (size_t i = 0; i < init.size(); ++i) {
    EXPECT_TRUE(straight[i].second.detach().equal(resumed[i].second.detach())) << init[i].first;
  }
}

}  // namespace
}  // namespace qtrain

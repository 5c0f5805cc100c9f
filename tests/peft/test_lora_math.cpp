// LoraLinear against the formulas: forward y = x W^T + b + s x A^T B^T, closed-form gradients,
// rsLoRA scaling, PEFT's initialisation, merge/unmerge, dropout, and a quantized base.
#include "core/error.h"
#include "models/quantized_linear_slot.h"
#include "peft/lora_linear.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <functional>
#include <limits>
#include <map>

namespace qtrain {
namespace {

at::Generator seeded(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

// A float64 DenseLinear [out, in] with bias, values ~ N(0, 1/in).
std::shared_ptr<DenseLinear> dense_base(int64_t in, int64_t out, uint64_t seed,
                                        at::ScalarType dtype = at::kDouble) {
  auto base = std::make_shared<DenseLinear>(in, out, true, at::TensorOptions().dtype(dtype));
  torch::NoGradGuard no_grad;
  auto gen = seeded(seed);
  base->weight().copy_(at::randn({out, in}, gen, at::kDouble) / std::sqrt(in));
  base->bias().copy_(at::randn({out}, gen, at::kDouble) * 0.1);
  return base;
}

LoraConfig f64_config(int64_t r, double alpha, bool rslora = false) {
  LoraConfig c;
  c.r = r;
  c.alpha = alpha;
  c.rslora = rslora;
  c.dtype = at::kDouble;
  return c;
}

// Gives B random values, so that the adapter changes the output.
void randomize_b(LoraLinear& lora, uint64_t seed) {
  auto gen = seeded(seed);
  lora.load_adapter_tensor("lora_B.weight", at::randn(lora.lora_B().sizes(), gen, at::kDouble));
}

ErrorKind kind_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no qtrain::Error thrown";
  return ErrorKind::kInternal;
}

TEST(LoraMath, ForwardEqualsDenseFormula) {
  auto base = dense_base(6, 5, 1);
  LoraLinear lora(base, f64_config(3, 6.0), seeded(2));
  randomize_b(lora, 3);
  at::Tensor x = at::randn({2, 4, 6}, seeded(4), at::kDouble);
  torch::NoGradGuard no_grad;
  at::Tensor expected = at::matmul(x, base->weight().t()) + base->bias() +
                        at::matmul(at::matmul(x, lora.lora_A().t()), lora.lora_B().t()) * 2.0;
  at::Tensor y = lora.forward(x);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 4, 5}));
  EXPECT_EQ(y.scalar_type(), at::kDouble);
  EXPECT_LT((y - expected).abs().max().item<double>(), 1e-13);
  EXPECT_EQ(lora.in_features(), 6);
  EXPECT_EQ(lora.out_features(), 5);
}

TEST(LoraMath, GradientsEqualClosedForm) {
  const double s = 8.0 / 4;
  auto base = dense_base(7, 5, 11);
  LoraLinear lora(base, f64_config(4, 8.0), seeded(12));
  randomize_b(lora, 13);
  at::Tensor x = at::randn({3, 2, 7}, seeded(14), at::kDouble).requires_grad_(true);
  at::Tensor g = at::randn({3, 2, 5}, seeded(15), at::kDouble);  // dL/dy
  (lora.forward(x) * g).sum().backward();

  torch::NoGradGuard no_grad;
  const at::Tensor& A = lora.lora_A();  // [r, in]
  const at::Tensor& B = lora.lora_B();  // [out, r]
  at::Tensor X = x.detach().reshape({-1, 7});
  at::Tensor G = g.reshape({-1, 5});
  at::Tensor grad_B = s * at::matmul(G.t(), at::matmul(X, A.t()));  // [out, r]
  at::Tensor grad_A = s * at::matmul(at::matmul(B.t(), G.t()), X);  // [r, in]
  at::Tensor grad_x = at::matmul(G, base->weight() + s * at::matmul(B, A)).reshape({3, 2, 7});
  EXPECT_LT((A.grad() - grad_A).abs().max().item<double>(), 1e-12);
  EXPECT_LT((B.grad() - grad_B).abs().max().item<double>(), 1e-12);
  EXPECT_LT((x.grad() - grad_x).abs().max().item<double>(), 1e-12);
  EXPECT_FALSE(base->weight().grad().defined());
  EXPECT_FALSE(base->bias().grad().defined());
}

TEST(LoraMath, BaseFrozenAdapterTrainableWithPeftNames) {
  auto base = dense_base(6, 5, 1);
  ASSERT_TRUE(base->weight().requires_grad());
  LoraLinear lora(base, f64_config(2, 4.0), seeded(2));
  std::map<std::string, bool> requires_grad;
  for (const auto& p : lora.named_parameters(true))
    requires_grad[p.key()] = p.value().requires_grad();
  const std::map<std::string, bool> expected = {{"base_layer.weight", false},
                                                {"base_layer.bias", false},
                                                {"lora_A.weight", true},
                                                {"lora_B.weight", true}};
  EXPECT_EQ(requires_grad, expected);
  auto tensors = lora.adapter_tensors();
  ASSERT_EQ(tensors.size(), 2u);
  EXPECT_EQ(tensors[0].first, "lora_A.weight");
  EXPECT_TRUE(tensors[0].second.is_same(lora.lora_A()));
  EXPECT_EQ(tensors[1].first, "lora_B.weight");
  EXPECT_TRUE(tensors[1].second.is_same(lora.lora_B()));
  EXPECT_EQ(lora.base().get(), base.get());
}

TEST(LoraMath, RsLoraScalesByAlphaOverSqrtR) {
  EXPECT_DOUBLE_EQ(f64_config(16, 32.0).scaling(), 2.0);
  EXPECT_DOUBLE_EQ(f64_config(16, 32.0, true).scaling(), 8.0);
  auto base = dense_base(6, 5, 1);
  LoraLinear plain(base, f64_config(4, 8.0), seeded(2));
  LoraLinear rs(dense_base(6, 5, 1), f64_config(4, 8.0, true), seeded(2));
  randomize_b(plain, 3);
  randomize_b(rs, 3);
  at::Tensor x = at::randn({4, 6}, seeded(4), at::kDouble);
  torch::NoGradGuard no_grad;
  at::Tensor base_y = base->forward(x);
  // Same A and B, so the adapter contributions differ by (8/2) / (8/4) = 2.
  at::Tensor ratio = (rs.forward(x) - base_y) / (plain.forward(x) - base_y);
  EXPECT_LT((ratio - 2.0).abs().max().item<double>(), 1e-10);
}

TEST(LoraMath, KaimingInitBoundsZeroBAndSeedDeterminism) {
  const int64_t in = 100, r = 16;
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  auto base = dense_base(in, 8, 1);
  LoraLinear lora(base, f64_config(r, 16.0), seeded(7));
  const at::Tensor& A = lora.lora_A();
  EXPECT_EQ(A.sizes(), (std::vector<int64_t>{r, in}));
  const double max_abs = A.abs().max().item<double>();
  EXPECT_LE(max_abs, bound * (1 + 1e-7));  // A is drawn in float32
  EXPECT_GT(max_abs, bound * 0.98);
  EXPECT_NEAR(A.mean().item<double>(), 0.0, 0.01);
  EXPECT_NEAR(A.var().item<double>(), bound * bound / 3, bound * bound * 0.05);
  EXPECT_EQ(lora.lora_B().count_nonzero().item<int64_t>(), 0);

  LoraLinear same(dense_base(in, 8, 1), f64_config(r, 16.0), seeded(7));
  LoraLinear other(dense_base(in, 8, 1), f64_config(r, 16.0), seeded(8));
  EXPECT_TRUE(at::equal(A, same.lora_A()));
  EXPECT_FALSE(at::equal(A, other.lora_A()));

  // A fresh adapter leaves the output unchanged.
  at::Tensor x = at::randn({3, in}, seeded(9), at::kDouble);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(lora.forward(x), base->forward(x)));
}

TEST(LoraMath, GaussianInitHasStdOneOverR) {
  LoraConfig c = f64_config(8, 16.0);
  c.init = "gaussian";
  LoraLinear lora(dense_base(400, 8, 1), c, seeded(3));
  EXPECT_NEAR(lora.lora_A().std().item<double>(), 1.0 / 8, 0.05 / 8);
  EXPECT_NEAR(lora.lora_A().mean().item<double>(), 0.0, 0.01);
  EXPECT_EQ(lora.lora_B().count_nonzero().item<int64_t>(), 0);
}

TEST(LoraMath, MergeKeepsOutputAndUnmergeRestoresWeight) {
  auto base = dense_base(9, 6, 21);
  LoraLinear lora(base, f64_config(3, 5.0), seeded(22));
  randomize_b(lora, 23);
  const at::Tensor original = base->weight().clone();
  at::Tensor x = at::randn({5, 9}, seeded(24), at::kDouble);
  torch::NoGradGuard no_grad;
  at::Tensor unmerged_y = lora.forward(x);

  at::Tensor expected_delta = (5.0 / 3) * at::matmul(lora.lora_B(), lora.lora_A());
  EXPECT_LT((lora.delta_weight() - expected_delta).abs().max().item<double>(), 1e-14);
  EXPECT_EQ(lora.delta_weight().scalar_type(), at::kDouble);

  lora.merge();
  EXPECT_TRUE(lora.merged());
  EXPECT_LT((base->weight() - original - expected_delta).abs().max().item<double>(), 1e-14);
  EXPECT_LT((lora.forward(x) - unmerged_y).abs().max().item<double>(), 1e-10);
  EXPECT_EQ(kind_of([&] { lora.merge(); }), ErrorKind::kInternal);
  EXPECT_EQ(kind_of([&] { lora.load_adapter_tensor("lora_B.weight", lora.lora_B()); }),
            ErrorKind::kInternal);

  lora.unmerge();
  EXPECT_FALSE(lora.merged());
  // (w + d) - d in float64: within an ulp of w.
  EXPECT_LT((base->weight() - original).abs().max().item<double>(),
            4 * std::numeric_limits<double>::epsilon());
  EXPECT_LT((lora.forward(x) - unmerged_y).abs().max().item<double>(), 1e-12);
  EXPECT_EQ(kind_of([&] { lora.unmerge(); }), ErrorKind::kInternal);
}

TEST(LoraMath, Bf16MergeRoundsOnceToTheWeightDtype) {
  auto base = dense_base(16, 8, 31, at::kBFloat16);
  LoraConfig c;  // bf16 adapter
  c.r = 4;
  c.alpha = 8;
  LoraLinear lora(base, c, seeded(32));
  lora.load_adapter_tensor("lora_B.weight", at::randn({8, 4}, seeded(33)) * 0.1);
  const at::Tensor original = base->weight().clone();
  lora.merge();
  at::Tensor expected = (original.to(at::kFloat) + lora.delta_weight()).to(at::kBFloat16);
  EXPECT_TRUE(at::equal(base->weight(), expected));
  EXPECT_EQ(lora.delta_weight().scalar_type(), at::kFloat);
  const at::Tensor merged = base->weight().to(at::kFloat);
  lora.unmerge();
  EXPECT_TRUE(at::equal(base->weight(), (merged - lora.delta_weight()).to(at::kBFloat16)));
  // Two roundings to bf16 (unit roundoff 2^-8): |w'' - w| <= 2^-8 (|w'| + |w|).
  at::Tensor err = (base->weight().to(at::kFloat) - original.to(at::kFloat)).abs();
  at::Tensor bound = (merged.abs() + original.to(at::kFloat).abs()) * (1.0 / 256) * 1.01;
  EXPECT_TRUE((err <= bound).all().item<bool>());
}

TEST(LoraMath, DropoutOnlyInTrainingAndReplaysUnderSeed) {
  auto base = dense_base(12, 4, 41);
  LoraConfig c = f64_config(3, 6.0);
  c.dropout = 0.5;
  LoraLinear lora(base, c, seeded(42));
  randomize_b(lora, 43);
  at::Tensor x = at::randn({6, 12}, seeded(44), at::kDouble);
  torch::NoGradGuard no_grad;
  auto adapter_out = [&](const at::Tensor& h) {
    return base->forward(x) + at::matmul(at::matmul(h, lora.lora_A().t()), lora.lora_B().t()) * 2.0;
  };

  lora.eval();
  EXPECT_LT((lora.forward(x) - adapter_out(x)).abs().max().item<double>(), 1e-13);

  lora.train();
  at::manual_seed(123);
  at::Tensor y1 = lora.forward(x);
  at::manual_seed(123);
  at::Tensor y2 = lora.forward(x);
  at::Tensor y3 = lora.forward(x);
  EXPECT_TRUE(at::equal(y1, y2));  // the global generator drives the masks
  EXPECT_FALSE(at::equal(y2, y3));
  at::manual_seed(123);
  at::Tensor dropped = at::dropout(x, 0.5, true);  // the same mask, drawn the same way
  EXPECT_LT((y1 - adapter_out(dropped)).abs().max().item<double>(), 1e-13);
  EXPECT_GT((y1 - adapter_out(x)).abs().max().item<double>(), 1e-3);
}

TEST(LoraMath, QuantizedBaseForwardAndBackwardMatchDequantizedDense) {
  const int64_t in = 64, out = 32;
  at::Tensor w = at::randn({out, in}, seeded(51)) / 8;
  QuantConfig qc;  // NF4, blocksize 64
  auto base = std::make_shared<QuantizedLinearSlot>(quantize(w, qc), at::Tensor());
  const at::Tensor w_deq = base->weight().dequantize(at::kFloat);  // [out, in]
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dtype = at::kFloat;
  LoraLinear lora(base, c, seeded(52));
  lora.load_adapter_tensor("lora_B.weight", at::randn({out, 4}, seeded(53)));
  EXPECT_EQ(lora.lora_A().scalar_type(), at::kFloat);

  at::Tensor x = at::randn({2, 3, in}, seeded(54)).requires_grad_(true);
  at::Tensor g = at::randn({2, 3, out}, seeded(55));
  at::Tensor y = lora.forward(x);
  (y * g).sum().backward();

  at::Tensor x_ref = x.detach().clone().requires_grad_(true);
  at::Tensor a_ref = lora.lora_A().detach().clone().requires_grad_(true);
  at::Tensor b_ref = lora.lora_B().detach().clone().requires_grad_(true);
  at::Tensor y_ref =
      at::matmul(x_ref, w_deq.t()) + at::matmul(at::matmul(x_ref, a_ref.t()), b_ref.t()) * 2.0;
  (y_ref * g).sum().backward();
  EXPECT_LT((y - y_ref).abs().max().item<double>(), 1e-5);
  EXPECT_LT((lora.lora_A().grad() - a_ref.grad()).abs().max().item<double>(), 1e-4);
  EXPECT_LT((lora.lora_B().grad() - b_ref.grad()).abs().max().item<double>(), 1e-4);
  EXPECT_LT((x.grad() - x_ref.grad()).abs().max().item<double>(), 1e-5);

  EXPECT_EQ(kind_of([&] { lora.merge(); }), ErrorKind::kUnsupported);
  EXPECT_FALSE(lora.merged());
  torch::NoGradGuard no_grad;
  EXPECT_LT((lora.delta_weight() - 2.0 * at::matmul(lora.lora_B(), lora.lora_A()))
                .abs()
                .max()
                .item<double>(),
            1e-5);
}

TEST(LoraMath, CudaBaseGetsCudaAdaptersWithTheCpuDraws) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto cpu_base = dense_base(32, 16, 61, at::kFloat);
  auto cuda_base =
      std::make_shared<DenseLinear>(32, 16, true, at::TensorOptions().device(at::kCUDA));
  {
    torch::NoGradGuard no_grad;
    cuda_base->weight().copy_(cpu_base->weight());
    cuda_base->bias().copy_(cpu_base->bias());
  }
  LoraConfig c;
  c.dtype = at::kFloat;
  LoraLinear on_cpu(cpu_base, c, seeded(62));
  LoraLinear on_cuda(cuda_base, c, seeded(62));
  EXPECT_TRUE(on_cuda.lora_A().is_cuda());
  EXPECT_TRUE(on_cuda.lora_B().is_cuda());
  EXPECT_TRUE(at::equal(on_cuda.lora_A().cpu(), on_cpu.lora_A()));
  at::Tensor b = at::randn({16, 8}, seeded(63));
  on_cpu.load_adapter_tensor("lora_B.weight", b);
  on_cuda.load_adapter_tensor("lora_B.weight", b);
  at::Tensor x = at::randn({4, 32}, seeded(64));
  torch::NoGradGuard no_grad;
  EXPECT_LT((on_cuda.forward(x.cuda()).cpu() - on_cpu.forward(x)).abs().max().item<double>(), 1e-4);
  on_cuda.merge();
  EXPECT_LT((on_cuda.forward(x.cuda()).cpu() - on_cpu.forward(x)).abs().max().item<double>(), 1e-4);
}

TEST(LoraMath, LoadAdapterTensorChecksNameAndShape) {
  LoraLinear lora(dense_base(6, 5, 1), f64_config(2, 4.0), seeded(2));
  EXPECT_EQ(kind_of([&] {
              lora.load_adapter_tensor("lora_A.weight", at::zeros({2, 7}));
            }),
            ErrorKind::kShape);
  EXPECT_EQ(kind_of([&] {
              lora.load_adapter_tensor("lora_B.weight", at::zeros({5, 3}));
            }),
            ErrorKind::kShape);
  EXPECT_EQ(kind_of([&] {
              lora.load_adapter_tensor("lora_C.weight", at::zeros({5, 2}));
            }),
            ErrorKind::kShape);
  at::Tensor a = at::full({2, 6}, 0.25, at::kFloat);
  lora.load_adapter_tensor("lora_A.weight", a);  // converted to the adapter's dtype
  EXPECT_TRUE(at::equal(lora.lora_A(), a.to(at::kDouble)));
  EXPECT_TRUE(lora.lora_A().requires_grad());
}

TEST(LoraMath, InvalidConfigIsAConfigError) {
  LoraConfig c = f64_config(0, 4.0);
  EXPECT_EQ(kind_of([&] { LoraLinear(dense_base(6, 5, 1), c, seeded(1)); }), ErrorKind::kConfig);
  c = f64_config(2, 4.0);
  c.dropout = 1.0;
  EXPECT_EQ(kind_of([&] { c.validate(); }), ErrorKind::kConfig);
  c = f64_config(2, 4.0);
  c.init = "pissa";
  EXPECT_EQ(kind_of([&] { c.validate(); }), ErrorKind::kConfig);
  c = f64_config(2, 4.0);
  c.target_modules = {"all-linear", "q_proj"};
  EXPECT_EQ(kind_of([&] { c.validate(); }), ErrorKind::kConfig);
}

}  // namespace
}  // namespace qtrain

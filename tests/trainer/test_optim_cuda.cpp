// The optimizers on a GPU (skipped without one): paged states in CUDA managed memory give the
// same results as plain ones, and the 8-bit composite GPU path agrees with the CPU loop.
#include "tests/support/test_support.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/adamw_8bit.h"
#include "trainer/optim/state_memory.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#ifdef QTRAIN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include <cstdio>

namespace qtrain {
namespace {

#define REQUIRE_CUDA()                                               \
  do {                                                               \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU"; \
  } while (0)

AdamWOptions options() {
  AdamWOptions o;
  o.lr = 1e-3;
  o.weight_decay = 0.01;
  return o;
}

// Runs `kind` for 8 steps on a copy of `init` (on init's device); returns the optimizer.
std::unique_ptr<Optimizer> run(const std::string& kind, at::Tensor& param) {
  auto opt = make_optimizer(kind, {{"w", param}}, options());
  for (int k = 1; k <= 8; ++k) {
    at::manual_seed(k);
    param.mutable_grad() = at::randn(param.sizes()).to(param.device(), param.scalar_type());
    opt->step();
  }
  return opt;
}

std::vector<at::Tensor> buffers_of(const Optimizer& opt) {
  if (const auto* a = dynamic_cast<const AdamW*>(&opt)) return a->state_buffers();
  return dynamic_cast<const AdamW8bit&>(opt).state_buffers();
}

bool cuda_reports_managed(const at::Tensor& t) {
#ifdef QTRAIN_WITH_CUDA
  cudaPointerAttributes attributes{};
  return cudaPointerGetAttributes(&attributes, t.data_ptr()) == cudaSuccess &&
         attributes.type == cudaMemoryTypeManaged;
#else
  return false;
#endif
}

TEST(OptimCuda, PagedStatesAreManagedAndGiveTheSameResults) {
  REQUIRE_CUDA();
  for (const std::string kind : {"adamw", "adamw_8bit"}) {
    at::manual_seed(0);
    const at::Tensor init = at::randn({400, 300}).cuda();  // 120000 >= 1e5 elements
    at::Tensor plain = init.clone().set_requires_grad(true);
    at::Tensor paged = init.clone().set_requires_grad(true);
    auto a = run(kind, plain);
    auto b = run("paged_" + kind, paged);
    EXPECT_TRUE(plain.detach().equal(paged.detach())) << kind;
    const auto sa = a->state_dict();
    const auto sb = b->state_dict();
    for (const auto& [key, t] : sa) EXPECT_TRUE(t.equal(sb.at(key))) << kind << " " << key;
    for (const at::Tensor& t : buffers_of(*b)) {
      EXPECT_TRUE(t.is_cuda());
      EXPECT_TRUE(cuda_reports_managed(t)) << kind;
      EXPECT_TRUE(is_managed_memory(t));
    }
    for (const at::Tensor& t : buffers_of(*a)) EXPECT_FALSE(cuda_reports_managed(t)) << kind;
  }
}

TEST(OptimCuda, SmallParametersStayInDeviceMemory) {
  REQUIRE_CUDA();
  const at::Tensor param = at::zeros({1000}, at::kCUDA);
  EXPECT_FALSE(is_managed_memory(allocate_state(param, param.sizes(), at::kFloat, true)));
  const at::Tensor big = at::zeros({100000}, at::kCUDA);
  const at::Tensor state = allocate_state(big, big.sizes(), at::kByte, true);
  EXPECT_TRUE(is_managed_memory(state));
  EXPECT_EQ(state.count_nonzero().item<int64_t>(), 0);
  prefetch_to_device(state);
  EXPECT_TRUE(state.add(1).eq(1).all().item<bool>());
}

// The GPU composite path against the fused CPU loop, float32 and bf16 parameters.
TEST(OptimCuda, EightBitGpuMatchesCpu) {
  REQUIRE_CUDA();
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    at::manual_seed(1);
    const at::Tensor init = at::randn({96, 200}).to(dtype);
    at::Tensor cpu = init.clone().set_requires_grad(true);
    at::Tensor gpu = init.cuda().set_requires_grad(true);
    auto a = run("adamw_8bit", cpu);
    auto b = run("paged_adamw_8bit", gpu);
    const auto sa = a->state_dict();
    const auto sb = b->state_dict();
    int64_t differing = 0;
    for (const char* key : {"w.exp_avg.codes", "w.exp_avg_sq.codes"}) {
      differing += sa.at(key).ne(sb.at(key)).sum().item<int64_t>();
    }
    const double gap = testing::max_abs_diff(cpu.detach(), gpu.detach().cpu());
    std::printf("8-bit GPU vs CPU (%s): %lld of %lld codes differ, max param diff %.3g\n",
                c10::toString(dtype), static_cast<long long>(differing),
                static_cast<long long>(2 * init.numel()), gap);
    EXPECT_LE(differing, 2 * init.numel() / 1000) << dtype;
    EXPECT_LE(gap, dtype == at::kFloat ? 1e-5 : 2e-2) << dtype;
  }
}

}  // namespace
}  // namespace qtrain

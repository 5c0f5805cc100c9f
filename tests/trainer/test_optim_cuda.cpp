// The optimizers on a GPU (skipped without one): paged states in CUDA managed memory give the
// same results as plain ones, the 8-bit CUDA kernel equals the CPU loop bit for bit, the fused
// AdamW agrees with the CPU within rounding, and clipping plus a step never read the device.
#include "quant/codebooks.h"
#include "tests/support/test_support.h"
#include "trainer/optim/adam_8bit_kernel.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/adamw_8bit.h"
#include "trainer/optim/grad_clip.h"
#include "trainer/optim/state_memory.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#ifdef QTRAIN_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

#include <cmath>
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
  for (const std::string kind : {"adamw", "adamw_8bit", "adamw_bf16", "adamw_8bit_bf16"}) {
    at::manual_seed(0);
    // 120000 >= 1e5 elements; bf16 parameters add float32 masters, paged like the moments.
    const bool bf16 = kind.size() > 5 && kind.substr(kind.size() - 5) == "_bf16";
    const at::Tensor init = at::randn({400, 300}).to(bf16 ? at::kBFloat16 : at::kFloat).cuda();
    const std::string base = bf16 ? kind.substr(0, kind.size() - 5) : kind;
    at::Tensor plain = init.clone().set_requires_grad(true);
    at::Tensor paged = init.clone().set_requires_grad(true);
    auto a = run(base, plain);
    auto b = run("paged_" + base, paged);
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

// The whole 8-bit optimizer on the GPU (CUDA kernel) against the CPU loop, float32 and bf16
// parameters (bf16 through float32 masters): codes, absmax, masters and parameters bit for bit.
TEST(OptimCuda, EightBitGpuEqualsCpu) {
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
    ASSERT_EQ(sa.size(), sb.size());
    for (const auto& [key, t] : sa) {
      EXPECT_TRUE(t.equal(sb.at(key))) << c10::toString(dtype) << " " << key;
    }
    EXPECT_TRUE(cpu.detach().equal(gpu.detach().cpu())) << c10::toString(dtype);
  }
}

struct KernelCase {
  at::Tensor param, grad, codes1, codes2, absmax1, absmax2;
};

// The multi-tensor kernel directly, over 40 parameters (two launches of <= 36, runs broken by
// dtype changes): float32, bf16 and fp16 parameters and gradients, partial last blocks, a block
// whose gradients are all zero at the first step (absmax 0), NaN and Inf gradients, and
// per-parameter step counts. Every code, absmax and parameter equals the CPU loop's.
TEST(OptimCuda, EightBitKernelEqualsCpuLoopBitForBit) {
  REQUIRE_CUDA();
  const at::ScalarType dtypes[] = {at::kFloat, at::kBFloat16, at::kHalf};
  const at::Tensor q1 = dynamic_code_signed(), q2 = dynamic_code_unsigned();
  std::vector<KernelCase> cpu, gpu;
  at::manual_seed(3);
  for (int k = 0; k < 40; ++k) {
    const int64_t n = 4096 + 97 * k + (k % 3 == 0 ? 256 : 0);
    const int64_t blocks = (n + 255) / 256;
    const at::ScalarType pt = dtypes[(k / 4) % 3];
    KernelCase c{(at::randn({n}) * 0.1).to(pt), at::Tensor(),        at::zeros({n}, at::kByte),
                 at::zeros({n}, at::kByte),     at::zeros({blocks}), at::zeros({blocks})};
    cpu.push_back(c);
    gpu.push_back({c.param.cuda(), at::Tensor(), c.codes1.cuda(), c.codes2.cuda(), c.absmax1.cuda(),
                   c.absmax2.cuda()});
  }
  const at::Tensor q1_gpu = q1.cuda(), q2_gpu = q2.cuda();
  for (int64_t t = 1; t <= 6; ++t) {
    std::vector<Adam8bitBlockwiseTensors> batch;
    for (size_t k = 0; k < cpu.size(); ++k) {
      const int64_t n = cpu[k].param.numel();
      at::Tensor g = at::randn({n}) * (t % 2 ? 0.05 : 1.0);
      if (t == 1 && k % 5 == 0) g.slice(0, 256, 512).zero_();  // an all-zero block
      if (t == 3) g[k] = NAN;
      if (t == 4) g[n - 1 - k] = -INFINITY;
      g = g.to(k % 2 ? at::kBFloat16 : at::kFloat);
      // Parameter k sits out one step in 7: its own step count falls behind.
      const int64_t step = t - (k % 7 == 0 && t > 2 ? 1 : 0);
      if (k % 7 == 0 && t == 2) continue;
      const Adam8bitStep hyper{1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, step};
      KernelCase& c = cpu[k];
      adam_8bit_blockwise_update_fused_cpu(c.param, g, c.codes1, c.codes2, c.absmax1, c.absmax2, q1,
                                           q2, hyper);
      KernelCase& d = gpu[k];
      batch.push_back({d.param, g.cuda(), d.codes1, d.codes2, d.absmax1, d.absmax2, hyper});
    }
    adam_8bit_blockwise_update_many(batch, q1_gpu, q2_gpu);
  }
  int64_t differing = 0;
  for (size_t k = 0; k < cpu.size(); ++k) {
    const KernelCase& c = cpu[k];
    const KernelCase& d = gpu[k];
    const bool same = c.param.equal(d.param.cpu()) && c.codes1.equal(d.codes1.cpu()) &&
                      c.codes2.equal(d.codes2.cpu()) && c.absmax1.equal(d.absmax1.cpu()) &&
                      c.absmax2.equal(d.absmax2.cpu());
    EXPECT_TRUE(same) << "parameter " << k << " (" << c10::toString(c.param.scalar_type())
                      << "): codes1 " << c.codes1.ne(d.codes1.cpu()).sum().item<int64_t>()
                      << " codes2 " << c.codes2.ne(d.codes2.cpu()).sum().item<int64_t>()
                      << " max param diff " << testing::max_abs_diff(c.param, d.param.cpu());
    differing += same ? 0 : 1;
  }
  std::printf("8-bit CUDA kernel vs CPU loop: %lld of %zu parameters differ\n",
              static_cast<long long>(differing), cpu.size());
}

NamedParameters adapter_params(at::Device device) {
  at::manual_seed(9);
  NamedParameters out;
  for (int m = 0; m < 6; ++m) {
    const at::ScalarType dtype = m < 4 ? at::kBFloat16 : at::kFloat;
    out.emplace_back("m" + std::to_string(m) + ".lora_A",
                     (at::randn({16, 256}) * 0.02).to(dtype).to(device).set_requires_grad(true));
    out.emplace_back("m" + std::to_string(m) + ".lora_B",
                     (at::randn({320, 16}) * 0.02).to(dtype).to(device).set_requires_grad(true));
  }
  return out;
}

void set_adapter_grads(NamedParameters& params, int step) {
  at::manual_seed(700 + step);
  for (auto& [name, p] : params) {
    p.mutable_grad() = (at::randn(p.sizes()) * 0.1).to(p.scalar_type()).to(p.device());
  }
}

// at::_fused_adamw_ on CUDA against the CPU reference (per-tensor) over 50 steps: float32
// parameters and masters within a few float32 ulps of each tensor's scale, bf16 parameters within
// one ulp.
TEST(OptimCuda, FusedAdamWMatchesCpuWithinRounding) {
  REQUIRE_CUDA();
  NamedParameters cpu = adapter_params(at::kCPU);
  NamedParameters gpu = adapter_params(at::kCUDA);
  AdamWOptions o;
  o.lr = 1e-3;
  o.weight_decay = 0.01;
  AdamW a(cpu, o, /*paged=*/false);
  AdamW b(gpu, o, /*paged=*/false);
  for (int step = 1; step <= 50; ++step) {
    set_adapter_grads(cpu, step);
    set_adapter_grads(gpu, step);
    a.step();
    b.step();
  }
  const auto sa = a.state_dict();
  const auto sb = b.state_dict();
  double worst = 0;
  for (const auto& [key, t] : sa) {
    if (t.scalar_type() == at::kLong) {
      EXPECT_TRUE(t.equal(sb.at(key))) << key;
      continue;
    }
    const at::Tensor x = t.to(at::kDouble), y = sb.at(key).to(at::kDouble);
    worst = std::max(worst, (x - y).abs().max().item<double>() / x.abs().max().item<double>());
  }
  for (size_t i = 0; i < cpu.size(); ++i) {
    const at::Tensor x = cpu[i].second.detach().to(at::kFloat);
    const at::Tensor y = gpu[i].second.detach().cpu().to(at::kFloat);
    // bf16: one ulp of the element (masters a few float32 ulps apart round to neighbours at
    // most); plus a few float32 ulps of the tensor's scale for both dtypes.
    const double ulp = cpu[i].second.scalar_type() == at::kBFloat16 ? std::ldexp(1.0, -7) : 0.0;
    const double scale = x.abs().max().item<double>();
    EXPECT_TRUE((x - y).abs().le(x.abs() * ulp + scale * 1e-6).all().item<bool>()) << cpu[i].first;
  }
  std::printf("fused CUDA AdamW vs CPU, 50 steps: max rel diff of states and masters %.2e\n",
              worst);
  EXPECT_LE(worst, 1e-6);
}

// The norm on the GPU (one _foreach_norm) against the CPU's: float32 rounding of the reduction.
TEST(OptimCuda, ClipOnDeviceMatchesCpu) {
  REQUIRE_CUDA();
  NamedParameters cpu = adapter_params(at::kCPU);
  NamedParameters gpu = adapter_params(at::kCUDA);
  set_adapter_grads(cpu, 1);
  set_adapter_grads(gpu, 1);
  std::vector<at::Tensor> pc, pg;
  for (auto& [name, p] : cpu) pc.push_back(p);
  for (auto& [name, p] : gpu) pg.push_back(p);
  const double nc = clip_grad_norm_on_device(pc, 0.5).item<double>();
  const at::Tensor ng = clip_grad_norm_on_device(pg, 0.5);
  EXPECT_TRUE(ng.is_cuda());
  EXPECT_NEAR(ng.item<double>(), nc, 1e-6 * nc);
  for (size_t i = 0; i < pc.size(); ++i) {
    const at::Tensor x = pc[i].grad().to(at::kFloat), y = pg[i].grad().cpu().to(at::kFloat);
    EXPECT_LE((x - y).abs().max().item<double>(), 1e-2 * x.abs().max().item<double>());
  }
}

// Clipping and a step of every kind on bf16 and float32 adapters, with CUDA's sync debug mode set
// to throw on any device-to-host synchronisation.
TEST(OptimCuda, ClipAndStepNeverSynchronise) {
  REQUIRE_CUDA();
#ifdef QTRAIN_WITH_CUDA
  for (const std::string kind : {"adamw", "paged_adamw", "adamw_8bit", "paged_adamw_8bit"}) {
    NamedParameters params = adapter_params(at::kCUDA);
    std::vector<at::Tensor> tensors;
    for (auto& [name, p] : params) tensors.push_back(p);
    auto opt = make_optimizer(kind, params, AdamWOptions{});
    set_adapter_grads(params, 1);
    opt->step();  // the first step takes the masters; later steps too must not read back
    set_adapter_grads(params, 2);
    const at::Tensor probe = at::ones({}, at::kCUDA);
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
    bool mode_active = false;
    try {
      probe.item<float>();
    } catch (const c10::Error&) {
      mode_active = true;
    }
    try {
      if (mode_active) {
        clip_grad_norm_on_device(tensors, 1.0);
        opt->step();
        opt->zero_grad();
      }
    } catch (const c10::Error& e) {
      ADD_FAILURE() << kind << " synchronised: " << e.what();
    }
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
    if (!mode_active) GTEST_SKIP() << "CUDA sync debug mode is not visible from this binary";
  }
#endif
}

}  // namespace
}  // namespace qtrain

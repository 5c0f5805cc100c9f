#include "trainer/optim/adam_8bit_kernel.h"

#include "core/error.h"
#include "quant/blockwise.h"

#ifdef QTRAIN_WITH_CUDA
#include "trainer/optim/cuda/adam_8bit_cuda.h"
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>

namespace qtrain {
namespace {

// The float32 scalars of one update, computed once as the CUDA kernels do.
struct Scalars {
  float beta1, beta2;
  float one_minus_beta1, one_minus_beta2;
  float step_size;  // -lr * c2 / c1
  float eps_hat;    // c2 * eps
  bool decays;      // weight_decay > 0
  float decay;      // 1 - lr * weight_decay
};

Scalars scalars_of(const Adam8bitStep& s) {
  if (s.step < 1) throw_error(ErrorKind::kInternal, "8-bit Adam update needs a step >= 1");
  // In float64 from the float32 hyperparameters, rounded once: 1 - b2^t cancels, so a float32
  // power (CUDA's __powf) would cost up to ~1e-5 relative in c2 at small t.
  const double t = static_cast<double>(s.step);
  const double c1 = 1.0 - std::pow(static_cast<double>(s.beta1), t);
  const double c2 = std::sqrt(1.0 - std::pow(static_cast<double>(s.beta2), t));
  Scalars k;
  k.beta1 = s.beta1;
  k.beta2 = s.beta2;
  k.one_minus_beta1 = 1.0f - s.beta1;
  k.one_minus_beta2 = 1.0f - s.beta2;
  k.step_size = static_cast<float>(-static_cast<double>(s.lr) * c2 / c1);
  k.eps_hat = static_cast<float>(c2 * static_cast<double>(s.eps));
  k.decays = s.weight_decay > 0.0f;
  k.decay = 1.0f - s.lr * s.weight_decay;
  return k;
}

// A sorted 256-entry code table and the float32 midpoints between neighbours.
struct CodeTable {
  std::array<float, 256> value;
  std::array<float, 256> midpoint;  // [k] between value[k] and value[k+1]; [255] = +inf (padding)

  explicit CodeTable(const at::Tensor& qmap) {
    const at::Tensor table = qmap.to(at::kCPU, at::kFloat).contiguous();
    std::copy_n(table.data_ptr<float>(), 256, value.begin());
    for (int k = 0; k < 255; ++k) midpoint[k] = (value[k] + value[k + 1]) * 0.5f;
    midpoint[255] = INFINITY;
  }
  // Nearest value, ties to the lower code: the number of midpoints strictly below xn, found by a
  // branchless binary search. NaN (an all-zero block: 0 * (1/0)) compares false: code 0.
  uint8_t code_of(float xn) const {
    int q = 0;
    for (int step = 128; step > 0; step >>= 1) q += midpoint[q + step - 1] < xn ? step : 0;
    return static_cast<uint8_t>(q);
  }
};

// One block of the blockwise kernel (count <= 256 elements starting at p, g, c1, c2).
template <typename T>
void update_block(T* p, const float* g, uint8_t* c1, uint8_t* c2, float* absmax1, float* absmax2,
                  int64_t count, const CodeTable& q1, const CodeTable& q2, const Scalars& k) {
  std::array<float, kAdam8bitBlocksize> m;
  std::array<float, kAdam8bitBlocksize> v;
  const float old_absmax1 = *absmax1;
  const float old_absmax2 = *absmax2;
  float max1 = -FLT_MAX;
  float max2 = -FLT_MAX;
  for (int64_t j = 0; j < count; ++j) {
    const float gj = g[j];
    if (std::isfinite(gj)) {
      const float v_old = q2.value[c2[j]] * old_absmax2;
      const float m_old = q1.value[c1[j]] * old_absmax1;
      v[j] = v_old * k.beta2 + k.one_minus_beta2 * gj * gj;
      m[j] = m_old * k.beta1 + k.one_minus_beta1 * gj;
    } else {
      m[j] = 0.0f;
      v[j] = 0.0f;
    }
    // fmaxf semantics: a NaN never wins.
    max1 = std::fabs(m[j]) > max1 ? std::fabs(m[j]) : max1;
    max2 = std::fabs(v[j]) > max2 ? std::fabs(v[j]) : max2;
  }
  *absmax1 = max1;
  *absmax2 = max2;

  for (int64_t j = 0; j < count; ++j) {
    if (!std::isfinite(g[j])) continue;
    T updated = static_cast<T>(static_cast<float>(p[j]) +
                               k.step_size * (m[j] / (std::sqrt(v[j]) + k.eps_hat)));
    if (k.decays) updated = static_cast<T>(static_cast<float>(updated) * k.decay);
    p[j] = updated;
  }

  const float inv1 = 1.0f / max1;
  const float inv2 = 1.0f / max2;
  for (int64_t j = 0; j < count; ++j) {
    uint8_t code1 = q1.code_of(m[j] * inv1);
    if (std::signbit(q1.value[code1]) != std::signbit(m[j])) {
      code1 = static_cast<uint8_t>(m[j] > 0.0f ? code1 + 1 : code1 - 1);  // wraps like bnb's char
    }
    c1[j] = code1;
    c2[j] = q2.code_of(v[j] * inv2);
  }
}

void check_blockwise_args(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& codes1,
                          const at::Tensor& codes2, const at::Tensor& absmax1,
                          const at::Tensor& absmax2) {
  const int64_t n = param.numel();
  const int64_t nblocks = (n + kAdam8bitBlocksize - 1) / kAdam8bitBlocksize;
  const bool ok = grad.numel() == n && codes1.numel() == n && codes2.numel() == n &&
                  codes1.scalar_type() == at::kByte && codes2.scalar_type() == at::kByte &&
                  absmax1.numel() == nblocks && absmax2.numel() == nblocks &&
                  absmax1.scalar_type() == at::kFloat && absmax2.scalar_type() == at::kFloat &&
                  codes1.is_contiguous() && codes2.is_contiguous() && absmax1.is_contiguous() &&
                  absmax2.is_contiguous();
  if (!ok) throw_error(ErrorKind::kInternal, "8-bit Adam update: mismatched state tensors");
}

}  // namespace

void adam_8bit_blockwise_update_fused_cpu(at::Tensor& param, const at::Tensor& grad,
                                          at::Tensor& codes1, at::Tensor& codes2,
                                          at::Tensor& absmax1, at::Tensor& absmax2,
                                          const at::Tensor& qmap1, const at::Tensor& qmap2,
                                          const Adam8bitStep& s) {
  check_blockwise_args(param, grad, codes1, codes2, absmax1, absmax2);
  const Scalars k = scalars_of(s);
  const CodeTable q1(qmap1);
  const CodeTable q2(qmap2);
  const int64_t n = param.numel();
  const at::Tensor g = grad.reshape({-1}).to(at::kFloat).contiguous();
  at::Tensor p = param.is_contiguous() ? param : param.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "adam_8bit", [&] {
    scalar_t* pp = p.data_ptr<scalar_t>();
    const float* gp = g.data_ptr<float>();
    uint8_t* c1 = codes1.data_ptr<uint8_t>();
    uint8_t* c2 = codes2.data_ptr<uint8_t>();
    float* a1 = absmax1.data_ptr<float>();
    float* a2 = absmax2.data_ptr<float>();
    const int64_t nblocks = absmax1.numel();
    at::parallel_for(0, nblocks, 64, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t begin = b * kAdam8bitBlocksize;
        const int64_t count = std::min(kAdam8bitBlocksize, n - begin);
        update_block(pp + begin, gp + begin, c1 + begin, c2 + begin, a1 + b, a2 + b, count, q1, q2,
                     k);
      }
    });
  });
  if (!p.is_same(param)) param.copy_(p);
}

void adam_8bit_blockwise_update_composite(at::Tensor& param, const at::Tensor& grad,
                                          at::Tensor& codes1, at::Tensor& codes2,
                                          at::Tensor& absmax1, at::Tensor& absmax2,
                                          const at::Tensor& qmap1, const at::Tensor& qmap2,
                                          const Adam8bitStep& s) {
  check_blockwise_args(param, grad, codes1, codes2, absmax1, absmax2);
  const Scalars k = scalars_of(s);
  const at::Tensor g = grad.reshape({-1}).to(at::kFloat);
  const at::Tensor finite = at::isfinite(g);
  const at::Tensor g0 = at::where(finite, g, 0.0);

  at::Tensor v = dequantize_blockwise_8bit(codes2, absmax2, qmap2, kAdam8bitBlocksize, at::kFloat);
  v = v.mul_(k.beta2).add_(g0 * k.one_minus_beta2 * g0);
  v = at::where(finite, v, 0.0);
  at::Tensor m = dequantize_blockwise_8bit(codes1, absmax1, qmap1, kAdam8bitBlocksize, at::kFloat);
  m = m.mul_(k.beta1).add_(g0 * k.one_minus_beta1);
  m = at::where(finite, m, 0.0);

  const at::Tensor p_flat = param.reshape({-1});
  at::Tensor updated =
      (p_flat.to(at::kFloat) + (m / (v.sqrt() + k.eps_hat)) * k.step_size).to(param.scalar_type());
  if (k.decays) updated = (updated.to(at::kFloat) * k.decay).to(param.scalar_type());
  param.copy_(at::where(finite, updated, p_flat).view(param.sizes()));

  auto [q1, new_absmax1] = quantize_blockwise_8bit(m, qmap1, kAdam8bitBlocksize);
  auto [q2, new_absmax2] = quantize_blockwise_8bit(v, qmap2, kAdam8bitBlocksize);
  const at::Tensor decoded_negative = at::signbit(qmap1.index_select(0, q1.to(at::kLong)));
  const at::Tensor wrong_sign = decoded_negative.ne(at::signbit(m));
  const at::Tensor toward_m = at::where(m > 0, 1, -1).to(at::kInt);
  const at::Tensor nudged = (q1.to(at::kInt) + toward_m).bitwise_and(255);
  q1 = at::where(wrong_sign, nudged, q1.to(at::kInt)).to(at::kByte);

  codes1.copy_(q1.view(codes1.sizes()));
  codes2.copy_(q2.view(codes2.sizes()));
  absmax1.copy_(new_absmax1);
  absmax2.copy_(new_absmax2);
}

#ifdef QTRAIN_WITH_CUDA
namespace {

bool cuda_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

bool takes_cuda_kernel(const Adam8bitBlockwiseTensors& x) {
  return x.param.is_cuda() && x.param.is_contiguous() && cuda_kernel_dtype(x.param.scalar_type()) &&
         cuda_kernel_dtype(x.grad.scalar_type());
}

cuda::Adam8bitScalars cuda_scalars(const Adam8bitStep& s) {
  const Scalars k = scalars_of(s);
  return {k.beta1,     k.beta2,   k.one_minus_beta1, k.one_minus_beta2,
          k.step_size, k.eps_hat, k.decay,           k.decays};
}

}  // namespace
#endif

void adam_8bit_blockwise_update_many(std::vector<Adam8bitBlockwiseTensors>& params,
                                     const at::Tensor& qmap1, const at::Tensor& qmap2) {
#ifdef QTRAIN_WITH_CUDA
  std::vector<cuda::Adam8bitTensors> on_cuda;
  at::Tensor table1, table2;
  for (Adam8bitBlockwiseTensors& x : params) {
    if (!takes_cuda_kernel(x)) {
      adam_8bit_blockwise_update(x.param, x.grad, x.codes1, x.codes2, x.absmax1, x.absmax2, qmap1,
                                 qmap2, x.step);
      continue;
    }
    check_blockwise_args(x.param, x.grad, x.codes1, x.codes2, x.absmax1, x.absmax2);
    if (!on_cuda.empty() && x.param.device() != on_cuda[0].param.device()) {
      throw_error(ErrorKind::kInternal, "8-bit Adam update: parameters on several devices");
    }
    if (on_cuda.empty()) {
      table1 = qmap1.to(x.param.device(), at::kFloat).contiguous();
      table2 = qmap2.to(x.param.device(), at::kFloat).contiguous();
    }
    on_cuda.push_back({x.param.view({-1}), x.grad.reshape({-1}).contiguous(), x.codes1, x.codes2,
                       x.absmax1, x.absmax2, cuda_scalars(x.step)});
  }
  cuda::adam_8bit_blockwise_update(on_cuda, table1, table2);
#else
  for (Adam8bitBlockwiseTensors& x : params) {
    adam_8bit_blockwise_update(x.param, x.grad, x.codes1, x.codes2, x.absmax1, x.absmax2, qmap1,
                               qmap2, x.step);
  }
#endif
}

void adam_8bit_blockwise_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& codes1,
                                at::Tensor& codes2, at::Tensor& absmax1, at::Tensor& absmax2,
                                const at::Tensor& qmap1, const at::Tensor& qmap2,
                                const Adam8bitStep& s) {
  if (param.is_cpu()) {
    adam_8bit_blockwise_update_fused_cpu(param, grad, codes1, codes2, absmax1, absmax2, qmap1,
                                         qmap2, s);
    return;
  }
#ifdef QTRAIN_WITH_CUDA
  std::vector<Adam8bitBlockwiseTensors> one{{param, grad, codes1, codes2, absmax1, absmax2, s}};
  if (takes_cuda_kernel(one[0])) {
    adam_8bit_blockwise_update_many(one, qmap1, qmap2);
    return;
  }
#endif
  adam_8bit_blockwise_update_composite(param, grad, codes1, codes2, absmax1, absmax2, qmap1, qmap2,
                                       s);
}

// Each tensor operation rounds to float32 once, so on the CPU this equals the kernel's scalar
// formulas element for element.
void adam_32bit_bnb_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                           at::Tensor& exp_avg_sq, const Adam8bitStep& s) {
  const Scalars k = scalars_of(s);
  const at::Tensor g = grad.reshape(exp_avg.sizes()).to(at::kFloat);
  exp_avg.mul_(k.beta1).add_(g * k.one_minus_beta1);
  exp_avg_sq.mul_(k.beta2).add_((g * g) * k.one_minus_beta2);
  const at::Tensor step = (exp_avg / (exp_avg_sq.sqrt() + k.eps_hat)) * k.step_size;
  at::Tensor updated =
      (param.reshape(exp_avg.sizes()).to(at::kFloat) + step).to(param.scalar_type());
  if (k.decays) updated = (updated.to(at::kFloat) * k.decay).to(param.scalar_type());
  param.copy_(updated.view(param.sizes()));
}

}  // namespace qtrain

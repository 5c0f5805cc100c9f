// Blockwise 8-bit AdamW on CUDA: one thread per element, one 256-thread CUDA block per 256-element
// quantization block at a time (grid-stride over the blocks of up to kMaxTensors parameters).
// The code tables and their midpoints are staged in shared memory once per CUDA block.
#include "quant/cuda/common.cuh"
#include "trainer/optim/cuda/adam_8bit_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cfloat>
#include <cstdint>

namespace qtrain::cuda {
namespace {

using detail::from_float;
using detail::to_float;

constexpr int kBlocksize = 256;  // quantization block = threads per CUDA block (one per element)
constexpr int kWarps = kBlocksize / detail::kWarpSize;
constexpr int kMaxTensors = 36;  // per launch: the arguments must fit CUDA's 4 KiB

struct TensorArgs {
  void* param;
  const void* grad;
  uint8_t* codes1;
  uint8_t* codes2;
  float* absmax1;
  float* absmax2;
  int64_t numel;
  Adam8bitScalars k;
};

struct LaunchArgs {
  TensorArgs tensors[kMaxTensors];
  int64_t first_block[kMaxTensors + 1];  // prefix sums of the tensors' block counts
  int count;
};
static_assert(sizeof(LaunchArgs) + 2 * sizeof(void*) <= 4096, "kernel arguments exceed 4 KiB");

struct SharedTables {
  float value1[256];  // the signed map (m)
  float value2[256];  // the unsigned map (v)
  float mid1[256];    // [k] = (value[k] + value[k+1]) * 0.5f; [255] = +inf
  float mid2[256];
  float warp_max1[kWarps];
  float warp_max2[kWarps];
};

// The number of midpoints strictly below xn: the nearest code, ties to the lower one; NaN gives 0.
// The same branchless search as the CPU loop's CodeTable::code_of.
__device__ __forceinline__ uint8_t nearest_code(const float* mid, float xn) {
  int q = 0;
#pragma unroll
  for (int step = 128; step > 0; step >>= 1) q += mid[q + step - 1] < xn ? step : 0;
  return static_cast<uint8_t>(q);
}

__device__ __forceinline__ bool sign_bit(float x) {
  return (__float_as_uint(x) >> 31) != 0;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = detail::kWarpSize / 2; offset > 0; offset /= 2) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

// The parameter whose blocks include `block`: the last index with first_block[index] <= block
// (so an empty parameter's index is never chosen).
__device__ __forceinline__ int tensor_of(const LaunchArgs& args, int64_t block) {
  int lo = 0;
  int hi = args.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (args.first_block[mid] <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

template <typename P, typename G>
__global__ void __launch_bounds__(kBlocksize)
    adam_8bit_blockwise_kernel(const __grid_constant__ LaunchArgs args,
                               const float* __restrict__ qmap1, const float* __restrict__ qmap2) {
  __shared__ SharedTables s;
  const int t = threadIdx.x;
  s.value1[t] = qmap1[t];
  s.value2[t] = qmap2[t];
  __syncthreads();
  s.mid1[t] = t < 255 ? __fmul_rn(__fadd_rn(s.value1[t], s.value1[t + 1]), 0.5f) : INFINITY;
  s.mid2[t] = t < 255 ? __fmul_rn(__fadd_rn(s.value2[t], s.value2[t + 1]), 0.5f) : INFINITY;
  __syncthreads();

  const int64_t total = args.first_block[args.count];
  for (int64_t block = blockIdx.x; block < total; block += gridDim.x) {
    const int index = tensor_of(args, block);
    const TensorArgs& a = args.tensors[index];
    const Adam8bitScalars& k = a.k;
    const int64_t local = block - args.first_block[index];
    const int64_t i = local * kBlocksize + t;
    const bool inside = i < a.numel;

    float g = 0.0f;
    float m = 0.0f;
    float v = 0.0f;
    if (inside) {
      g = to_float(static_cast<const G*>(a.grad)[i]);
      if (isfinite(g)) {
        const float v_old = __fmul_rn(s.value2[a.codes2[i]], a.absmax2[local]);
        const float m_old = __fmul_rn(s.value1[a.codes1[i]], a.absmax1[local]);
        v = __fadd_rn(__fmul_rn(v_old, k.beta2), __fmul_rn(__fmul_rn(k.one_minus_beta2, g), g));
        m = __fadd_rn(__fmul_rn(m_old, k.beta1), __fmul_rn(k.one_minus_beta1, g));
      }
    }

    // Block max of |m| and |v| (fmaxf skips NaN like the CPU loop; max is order-independent).
    const float max1_lane = warp_max(inside ? fabsf(m) : -FLT_MAX);
    const float max2_lane = warp_max(inside ? fabsf(v) : -FLT_MAX);
    if (t % detail::kWarpSize == 0) {
      s.warp_max1[t / detail::kWarpSize] = max1_lane;
      s.warp_max2[t / detail::kWarpSize] = max2_lane;
    }
    // Also orders every thread's read of the old absmax before thread 0 overwrites it.
    __syncthreads();
    float max1 = s.warp_max1[0];
    float max2 = s.warp_max2[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
      max1 = fmaxf(max1, s.warp_max1[w]);
      max2 = fmaxf(max2, s.warp_max2[w]);
    }
    if (t == 0) {
      a.absmax1[local] = max1;
      a.absmax2[local] = max2;
    }

    if (inside) {
      if (isfinite(g)) {
        P* param = static_cast<P*>(a.param);
        const float step = __fdiv_rn(m, __fadd_rn(__fsqrt_rn(v), k.eps_hat));
        P updated = from_float<P>(__fadd_rn(to_float(param[i]), __fmul_rn(k.step_size, step)));
        if (k.decays) updated = from_float<P>(__fmul_rn(to_float(updated), k.decay));
        param[i] = updated;
      }
      uint8_t code1 = nearest_code(s.mid1, __fmul_rn(m, __frcp_rn(max1)));
      if (sign_bit(s.value1[code1]) != sign_bit(m)) {
        code1 = static_cast<uint8_t>(m > 0.0f ? code1 + 1 : code1 - 1);  // wraps like bnb's char
      }
      a.codes1[i] = code1;
      a.codes2[i] = nearest_code(s.mid2, __fmul_rn(v, __frcp_rn(max2)));
    }
    __syncthreads();  // the next block reuses warp_max1/2
  }
}

// Calls fn(T{}) with the CUDA element type of `type`.
template <typename Fn>
void dispatch(at::ScalarType type, Fn&& fn) {
  detail::dispatch_float("adam_8bit_blockwise_update", type, std::forward<Fn>(fn));
}

void launch(const LaunchArgs& args, at::ScalarType param_type, at::ScalarType grad_type,
            const float* qmap1, const float* qmap2) {
  const int64_t blocks = args.first_block[args.count];
  if (blocks == 0) return;
  const int resident =
      at::cuda::getCurrentDeviceProperties()->multiProcessorCount * (2048 / kBlocksize);
  const auto grid = static_cast<unsigned>(blocks < resident ? blocks : resident);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch(param_type, [&](auto param_tag) {
    using P = decltype(param_tag);
    dispatch(grad_type, [&](auto grad_tag) {
      using G = decltype(grad_tag);
      adam_8bit_blockwise_kernel<P, G><<<grid, kBlocksize, 0, stream>>>(args, qmap1, qmap2);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

void adam_8bit_blockwise_update(const std::vector<Adam8bitTensors>& tensors,
                                const at::Tensor& qmap1, const at::Tensor& qmap2) {
  if (tensors.empty()) return;
  const c10::cuda::CUDAGuard guard(tensors[0].param.device());
  const float* table1 = qmap1.data_ptr<float>();
  const float* table2 = qmap2.data_ptr<float>();
  size_t next = 0;
  while (next < tensors.size()) {
    const at::ScalarType param_type = tensors[next].param.scalar_type();
    const at::ScalarType grad_type = tensors[next].grad.scalar_type();
    LaunchArgs args{};
    int64_t blocks = 0;
    while (next < tensors.size() && args.count < kMaxTensors &&
           tensors[next].param.scalar_type() == param_type &&
           tensors[next].grad.scalar_type() == grad_type) {
      const Adam8bitTensors& x = tensors[next++];
      args.first_block[args.count] = blocks;
      args.tensors[args.count++] = {x.param.data_ptr(),
                                    x.grad.data_ptr(),
                                    x.codes1.data_ptr<uint8_t>(),
                                    x.codes2.data_ptr<uint8_t>(),
                                    x.absmax1.data_ptr<float>(),
                                    x.absmax2.data_ptr<float>(),
                                    x.param.numel(),
                                    x.scalars};
      blocks += ceil_div(x.param.numel(), int64_t{kBlocksize});
    }
    args.first_block[args.count] = blocks;
    launch(args, param_type, grad_type, table1, table2);
  }
}

}  // namespace qtrain::cuda

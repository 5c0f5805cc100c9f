// The quantize kernel shared by the one-code-per-element formats (8-bit blockwise, INT8): one
// warp per absmax block. The warp reduces max |x| over the block, lane 0 stores it, then the
// lanes code the block's elements in strides of 32 (the second read mostly hits L1/L2).
// Quantizing runs once per weight at load time, so it favours exactness over speed.
#pragma once

#include "quant/cuda/common.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>

#include <utility>

namespace qtrain::cuda::detail {

// A Coder describes one format:
//   using Code = uint8_t or int8_t;
//   static constexpr int kTableSize;               floats of shared memory it needs (0: none)
//   void stage(float* smem) const;                 fills them, called by every thread
//   float prepare(float absmax) const;             per-block factor (e.g. 1 / absmax)
//   Code operator()(float x, float factor, const float* smem) const;
template <typename T, typename Coder>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(Coder coder, const T* __restrict__ x, typename Coder::Code* __restrict__ q,
                    float* __restrict__ absmax, int64_t n, int64_t blocksize, int64_t nblocks) {
  __shared__ float smem[Coder::kTableSize > 0 ? Coder::kTableSize : 1];
  coder.stage(smem);
  __syncthreads();

  const int64_t block = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (block >= nblocks) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t begin = block * blocksize;
  const int64_t count = n - begin < blocksize ? n - begin : blocksize;
  const float m = warp_absmax(x + begin, count, lane);
  if (lane == 0) absmax[block] = m;
  const float factor = coder.prepare(m);
  for (int64_t i = lane; i < count; i += kWarpSize) {
    q[begin + i] = coder(to_float(x[begin + i]), factor, smem);
  }
}

// x: flat contiguous float32/float16/bfloat16 on a CUDA device -> (codes [n] of `code_dtype`,
// absmax float32 [nblocks]), computed on the current stream.
template <typename Coder>
std::pair<at::Tensor, at::Tensor> launch_quantize(const char* op, const Coder& coder,
                                                  const at::Tensor& x, int64_t blocksize,
                                                  at::ScalarType code_dtype) {
  const int64_t n = x.numel();
  const int64_t nblocks = ceil_div(n, blocksize);
  at::Tensor q = at::empty({n}, x.options().dtype(code_dtype));
  at::Tensor absmax = at::empty({nblocks}, x.options().dtype(at::kFloat));
  if (n == 0) return {q, absmax};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto grid = static_cast<unsigned>(ceil_div(nblocks, kWarpsPerBlock));
  dispatch_float(op, x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    quantize_kernel<T, Coder>
        <<<grid, kThreads, 0, stream>>>(coder, static_cast<const T*>(x.data_ptr()),
                                        static_cast<typename Coder::Code*>(q.data_ptr()),
                                        absmax.data_ptr<float>(), n, blocksize, nblocks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {q, absmax};
}

}  // namespace qtrain::cuda::detail

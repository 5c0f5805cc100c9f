// The dequantize kernel shared by the 4-bit, 8-bit and INT8 formats: value = decoded code times
// the block's scale, in float32, then one rounding to the output type.
//
// Vector path (block size a multiple of 16, codes suitably aligned): each thread owns 16
// consecutive elements, which then lie in one absmax block; it reads their codes with one 8- or
// 16-byte load, one absmax, and writes the outputs with 16-byte stores. A warp thus reads
// 256-512 contiguous bytes and writes 1-2 KiB contiguous bytes. The last, partial group of 16 is
// written element by element. Otherwise a scalar path handles one element per thread.
#pragma once

#include "quant/cuda/common.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>

namespace qtrain::cuda::detail {

constexpr int kGroup = 16;  // elements per thread on the vector path

// A Codec describes one format:
//   static constexpr int kTableSize;   floats of `table` staged in shared memory (0: none)
//   const float* table;                 device pointer to them
//   float scale(float absmax) const;    the factor applied to a decoded code
//   void decode16(int64_t first, const float* smem, float (&v)[16]) const;   vector path
//   float decode(int64_t i, const float* smem) const;                       one element
template <typename Out, typename Codec, bool kVector>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(Codec codec, const float* __restrict__ absmax, Out* __restrict__ out,
                      int64_t n, BlockMap blocks) {
  __shared__ float smem[Codec::kTableSize > 0 ? Codec::kTableSize : 1];
  for (int k = threadIdx.x; k < Codec::kTableSize; k += blockDim.x) smem[k] = codec.table[k];
  __syncthreads();

  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kVector) {
    const int64_t first = thread * kGroup;
    if (first >= n) return;
    const float scale = codec.scale(__ldg(absmax + blocks(first)));
    if (first + kGroup <= n) {
      float v[kGroup];
      codec.decode16(first, smem, v);
#pragma unroll
      for (int k = 0; k < kGroup; ++k) v[k] = __fmul_rn(v[k], scale);
      store16(out + first, v);
    } else {
      for (int64_t i = first; i < n; ++i) {
        out[i] = from_float<Out>(__fmul_rn(codec.decode(i, smem), scale));
      }
    }
  } else {
    if (thread >= n) return;
    const float scale = codec.scale(__ldg(absmax + blocks(thread)));
    out[thread] = from_float<Out>(__fmul_rn(codec.decode(thread, smem), scale));
  }
}

// Allocates the [n] output on `options`' device and runs the kernel on the current stream.
// `vector_ok`: the codes pointer is aligned for Codec::decode16.
template <typename Codec>
at::Tensor launch_dequantize(const char* op, const Codec& codec, bool vector_ok,
                             const at::Tensor& absmax, int64_t n, int64_t blocksize,
                             at::ScalarType out_dtype, const at::TensorOptions& options) {
  const at::ScalarType kernel_dtype = kernel_out_dtype(out_dtype);
  at::Tensor out = at::empty({n}, options.dtype(kernel_dtype));
  if (n == 0) return finish_output(out, out_dtype);
  const bool vector = vector_ok && blocksize % kGroup == 0;
  const BlockMap blocks = block_map(blocksize);
  const float* scales = absmax.data_ptr<float>();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float(op, kernel_dtype, [&](auto tag) {
    using Out = decltype(tag);
    Out* dst = static_cast<Out*>(out.data_ptr());
    if (vector) {
      const auto grid = static_cast<unsigned>(ceil_div(ceil_div(n, kGroup), kThreads));
      dequantize_kernel<Out, Codec, true>
          <<<grid, kThreads, 0, stream>>>(codec, scales, dst, n, blocks);
    } else {
      const auto grid = static_cast<unsigned>(ceil_div(n, kThreads));
      dequantize_kernel<Out, Codec, false>
          <<<grid, kThreads, 0, stream>>>(codec, scales, dst, n, blocks);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return finish_output(out, out_dtype);
}

}  // namespace qtrain::cuda::detail

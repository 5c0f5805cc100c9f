// NF4 / FP4 quantization: one warp per absmax block. Each lane codes a pair of elements and
// writes their byte (element 2k in the high nibble), so a warp stores 32 contiguous bytes.
#include "quant/codebook_tables.h"
#include "quant/cuda/blockwise_cuda.h"
#include "quant/cuda/common.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace qtrain::cuda {
namespace {

using namespace detail;

// The number of NF4 decision thresholds (formats.md §1.2) that xn exceeds: a value exactly on a
// threshold takes the lower code, and NaN (an all-zero block) exceeds none, giving code 0.
__device__ __forceinline__ uint32_t nf4_code(float xn) {
  uint32_t q = 0;
#pragma unroll
  for (int k = 0; k < codebook::kNF4Thresholds; ++k) q += xn > codebook::nf4_threshold(k);
  return q;
}

// The 3-bit FP4 code of every magnitude rank packed into one constant (rank r at bits 3r..3r+2).
constexpr uint32_t fp4_code_of_rank_bits() {
  uint32_t bits = 0;
  for (int rank = 0; rank < codebook::kFP4Ranks; ++rank) {
    bits |= static_cast<uint32_t>(codebook::fp4_code_of_rank(rank)) << (3 * rank);
  }
  return bits;
}

// FP4: sign bit for any xn < 0, magnitude rank by the thresholds on |xn|, then the 3-bit code of
// that rank (magnitudes 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1 have codes 0,1,6,7,4,5,2,3), read
// from a packed constant so no array is indexed at run time.
__device__ __forceinline__ uint32_t fp4_code(float xn) {
  constexpr uint32_t kCodeOfRank = fp4_code_of_rank_bits();
  const float magnitude = fabsf(xn);
  uint32_t rank = 0;
#pragma unroll
  for (int k = 0; k < codebook::kFP4Thresholds; ++k) rank += magnitude > codebook::fp4_threshold(k);
  return (xn < 0.0f ? 0b1000u : 0u) | ((kCodeOfRank >> (3 * rank)) & 0b111u);
}

template <typename T, bool kNF4>
__global__ void __launch_bounds__(kThreads)
    quantize_4bit_kernel(const T* __restrict__ x, uint8_t* __restrict__ packed,
                         float* __restrict__ absmax, int64_t n, int64_t blocksize,
                         int64_t nblocks) {
  const int64_t block = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (block >= nblocks) return;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t begin = block * blocksize;  // even: blocksize is
  const int64_t count = n - begin < blocksize ? n - begin : blocksize;
  const float m = warp_absmax(x + begin, count, lane);
  if (lane == 0) absmax[block] = m;
  const float inv = __frcp_rn(m);
  for (int64_t j = 2 * lane; j < count; j += 2 * kWarpSize) {
    const float hi = to_float(x[begin + j]);
    // odd n: the last low nibble codes a 0 pad, normalised like any element
    const float lo = j + 1 < count ? to_float(x[begin + j + 1]) : 0.0f;
    const float hn = __fmul_rn(hi, inv);
    const float ln = __fmul_rn(lo, inv);
    const uint32_t byte =
        kNF4 ? nf4_code(hn) << 4 | nf4_code(ln) : fp4_code(hn) << 4 | fp4_code(ln);
    packed[(begin + j) / 2] = static_cast<uint8_t>(byte);
  }
}

}  // namespace

std::pair<at::Tensor, at::Tensor> quantize_4bit(const at::Tensor& x, QuantType type,
                                                int64_t blocksize) {
  const char* op = "quantize_4bit";
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor input = flat_input(x);
  const int64_t n = input.numel();
  const int64_t nblocks = ceil_div(n, blocksize);
  at::Tensor packed = at::empty({(n + 1) / 2}, input.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({nblocks}, input.options().dtype(at::kFloat));
  if (n == 0) return {packed, absmax};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto grid = static_cast<unsigned>(ceil_div(nblocks, kWarpsPerBlock));
  const bool nf4 = type == QuantType::kNF4;
  dispatch_float(op, input.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(input.data_ptr());
    uint8_t* out = packed.data_ptr<uint8_t>();
    float* scales = absmax.data_ptr<float>();
    if (nf4) {
      quantize_4bit_kernel<T, true>
          <<<grid, kThreads, 0, stream>>>(in, out, scales, n, blocksize, nblocks);
    } else {
      quantize_4bit_kernel<T, false>
          <<<grid, kThreads, 0, stream>>>(in, out, scales, n, blocksize, nblocks);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {packed, absmax};
}

}  // namespace qtrain::cuda

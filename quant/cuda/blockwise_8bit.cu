// 8-bit blockwise quantization with a 256-entry code table (the dynamic map): nested absmax of
// double quantization and 8-bit optimizer states.
#include "quant/cuda/blockwise_cuda.h"
#include "quant/cuda/dequantize.cuh"
#include "quant/cuda/quantize.cuh"

#include <c10/cuda/CUDAGuard.h>

namespace qtrain::cuda {
namespace {

using namespace detail;

constexpr int kCodes = 256;

// The code of xn is the number of float32 midpoints (code[k] + code[k+1]) * 0.5f strictly below
// it (the CPU reference's lower_bound): the nearest value, ties to the lower one; NaN gives 0.
// The midpoints live in shared memory and are searched by binary lifting over 255 entries.
struct NearestCode {
  using Code = uint8_t;
  static constexpr int kTableSize = kCodes - 1;
  const float* code;  // sorted ascending

  __device__ void stage(float* midpoints) const {
    for (int k = threadIdx.x; k < kCodes - 1; k += blockDim.x) {
      midpoints[k] = __fmul_rn(__fadd_rn(code[k], code[k + 1]), 0.5f);
    }
  }
  __device__ float prepare(float absmax) const { return __frcp_rn(absmax); }
  __device__ Code operator()(float x, float inv, const float* midpoints) const {
    const float xn = __fmul_rn(x, inv);
    int below = 0;  // midpoints[0, below) are all < xn
#pragma unroll
    for (int step = 128; step > 0; step /= 2) {
      if (below + step <= kCodes - 1 && midpoints[below + step - 1] < xn) below += step;
    }
    return static_cast<Code>(below);
  }
};

// Each thread of the vector path reads 16 codes with one 16-byte load.
struct Bytes {
  static constexpr int kTableSize = kCodes;
  const float* table;
  const uint8_t* codes;

  __device__ float scale(float absmax) const { return absmax; }

  __device__ void decode16(int64_t first, const float* smem, float (&v)[16]) const {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(codes + first));
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
#pragma unroll
      for (int b = 0; b < 4; ++b) v[4 * w + b] = smem[(words[w] >> (8 * b)) & 0xFF];
    }
  }

  __device__ float decode(int64_t i, const float* smem) const {
    return smem[codes[i]];
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> quantize_blockwise_8bit(const at::Tensor& x,
                                                          const at::Tensor& code,
                                                          int64_t blocksize) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor input = flat_input(x);
  const at::Tensor table = code.reshape({-1}).contiguous();
  return launch_quantize("quantize_blockwise_8bit", NearestCode{table.data_ptr<float>()}, input,
                         blocksize, at::kByte);
}

at::Tensor dequantize_blockwise_8bit(const at::Tensor& codes, const at::Tensor& absmax,
                                     const at::Tensor& code, int64_t blocksize,
                                     at::ScalarType out_dtype) {
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor bytes = codes.reshape({-1}).contiguous();
  const at::Tensor scales = absmax.reshape({-1}).contiguous();
  const at::Tensor table = code.reshape({-1}).contiguous();
  const Bytes codec{table.data_ptr<float>(), bytes.data_ptr<uint8_t>()};
  return launch_dequantize("dequantize_blockwise_8bit", codec, aligned(codec.codes, 16), scales,
                           bytes.numel(), blocksize, out_dtype, codes.options());
}

}  // namespace qtrain::cuda

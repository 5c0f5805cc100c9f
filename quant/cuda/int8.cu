// Linear blockwise INT8 (the 8-bit LoRA base): q = round_half_away(x * (127 / absmax)) and
// value = q * (absmax / 127), both in float32.
#include "quant/cuda/blockwise_cuda.h"
#include "quant/cuda/dequantize.cuh"
#include "quant/cuda/quantize.cuh"

#include <c10/cuda/CUDAGuard.h>

namespace qtrain::cuda {
namespace {

using namespace detail;

// An all-zero block (absmax 0) gets factor 0; 0 * x, NaN inputs and inf * 0 all end as q = 0.
// The clamp only matters where 127/absmax rounded up.
struct Linear {
  using Code = int8_t;
  static constexpr int kTableSize = 0;

  __device__ void stage(float*) const {}
  __device__ float prepare(float absmax) const {
    return absmax > 0.0f ? __fdiv_rn(127.0f, absmax) : 0.0f;
  }
  __device__ Code operator()(float x, float factor, const float*) const {
    const float r = roundf(__fmul_rn(x, factor));  // halves away from zero, like std::round
    return isnan(r) ? 0 : static_cast<Code>(fminf(fmaxf(r, -127.0f), 127.0f));
  }
};

// Each thread of the vector path reads 16 codes with one 16-byte load.
struct SignedBytes {
  static constexpr int kTableSize = 0;
  const float* table = nullptr;
  const int8_t* q;

  __device__ float scale(float absmax) const { return __fdiv_rn(absmax, 127.0f); }

  __device__ void decode16(int64_t first, const float*, float (&v)[16]) const {
    const int4 raw = __ldg(reinterpret_cast<const int4*>(q + first));
    const uint32_t words[4] = {static_cast<uint32_t>(raw.x), static_cast<uint32_t>(raw.y),
                               static_cast<uint32_t>(raw.z), static_cast<uint32_t>(raw.w)};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        v[4 * w + b] = static_cast<float>(static_cast<int8_t>((words[w] >> (8 * b)) & 0xFF));
      }
    }
  }

  __device__ float decode(int64_t i, const float*) const {
    return static_cast<float>(q[i]);
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& x, int64_t blocksize) {
  const c10::cuda::CUDAGuard guard(x.device());
  return launch_quantize("quantize_int8", Linear{}, flat_input(x), blocksize, at::kChar);
}

at::Tensor dequantize_int8(const at::Tensor& q, const at::Tensor& absmax, int64_t blocksize,
                           at::ScalarType out_dtype) {
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor codes = q.reshape({-1}).contiguous();
  const at::Tensor scales = absmax.reshape({-1}).contiguous();
  const SignedBytes codec{nullptr, codes.data_ptr<int8_t>()};
  return launch_dequantize("dequantize_int8", codec, aligned(codec.q, 16), scales, codes.numel(),
                           blocksize, out_dtype, q.options());
}

}  // namespace qtrain::cuda

// Pieces shared by the blockwise CUDA kernels: element types, float conversions, the per-block
// absmax reduction, vectorised stores and the host-side dispatch on dtypes.
//
// Bit-exactness with the CPU reference: every product, quotient and reciprocal that decides a
// code or a stored value goes through the explicit round-to-nearest intrinsics (__fmul_rn,
// __fdiv_rn, __frcp_rn). They are never contracted into an FMA and stay IEEE even if someone
// builds with --use_fast_math.
#pragma once

#include "core/error.h"
#include "core/int_math.h"

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>
#include <cstring>

namespace qtrain::cuda::detail {

constexpr int kThreads = 256;  // threads per CUDA block in every kernel here
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;

__device__ __forceinline__ float to_float(float v) {
  return v;
}
__device__ __forceinline__ float to_float(__half v) {
  return __half2float(v);
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// Round to nearest even, like c10's float -> Half / BFloat16 conversions on the CPU.
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Two floats as the 32-bit pattern of two consecutive 16-bit outputs (lower address first),
// through the paired conversion instructions.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 pair = __floats2half2_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

// Stores 16 values at `dst` (16-byte aligned) with 16-byte stores.
template <typename T>
__device__ __forceinline__ void store16(T* dst, const float (&v)[16]) {
  if constexpr (sizeof(T) == 4) {
    float4* d = reinterpret_cast<float4*>(dst);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      d[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
    }
  } else {
    uint4* d = reinterpret_cast<uint4*>(dst);
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const float* w = v + 8 * k;
      d[k] = make_uint4(pack2<T>(w[0], w[1]), pack2<T>(w[2], w[3]), pack2<T>(w[4], w[5]),
                        pack2<T>(w[6], w[7]));
    }
  }
}

// Block index of element i: a shift for power-of-two block sizes, else a division.
struct BlockMap {
  int shift;  // log2(blocksize), or -1
  int64_t size;
  __device__ __forceinline__ int64_t operator()(int64_t i) const {
    return shift >= 0 ? i >> shift : i / size;
  }
};
BlockMap block_map(int64_t blocksize);

// max |x| over x[0, count) by the calling warp (every lane gets the result). Starts at -FLT_MAX
// and uses fmaxf, so NaNs are skipped exactly as in the CPU reference; max is order-independent,
// so the result is bit-identical to the sequential loop.
template <typename T>
__device__ __forceinline__ float warp_absmax(const T* __restrict__ x, int64_t count, int lane) {
  float m = -FLT_MAX;
  for (int64_t i = lane; i < count; i += kWarpSize) m = fmaxf(m, fabsf(to_float(x[i])));
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
  }
  return m;
}

inline bool aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

[[noreturn]] void unsupported_dtype(const char* op, at::ScalarType type);

// Calls fn(T{}) with the CUDA element type of `type`: float, __half or __nv_bfloat16.
template <typename Fn>
void dispatch_float(const char* op, at::ScalarType type, Fn&& fn) {
  switch (type) {
    case at::kFloat:
      fn(float{});
      break;
    case at::kHalf:
      fn(__half{});
      break;
    case at::kBFloat16:
      fn(__nv_bfloat16{});
      break;
    default:
      unsupported_dtype(op, type);
  }
}

// x flattened and contiguous, in a dtype the kernels read. float64 becomes float32 first, which
// is exactly what the CPU reference does to each element before any arithmetic.
at::Tensor flat_input(const at::Tensor& x);

// The kernels write float32 for a float64 result; the caller widens it (exact) afterwards.
at::ScalarType kernel_out_dtype(at::ScalarType out_dtype);
at::Tensor finish_output(const at::Tensor& out, at::ScalarType out_dtype);

}  // namespace qtrain::cuda::detail

// NF4 / FP4 dequantization, the hot path of every forward through a frozen 4-bit base: each
// thread turns 8 packed bytes (one 8-byte load) into 16 outputs (two 16-byte stores for
// bf16/fp16). The 16-entry code table sits in shared memory, where the warp's lookups cannot
// conflict (16 words in 16 distinct banks).
#include "quant/cuda/blockwise_cuda.h"
#include "quant/cuda/dequantize.cuh"

#include <c10/cuda/CUDAGuard.h>

namespace qtrain::cuda {
namespace {

using namespace detail;

struct Nibbles {
  static constexpr int kTableSize = 16;
  const float* table;
  const uint8_t* packed;

  __device__ float scale(float absmax) const { return absmax; }

  __device__ void decode16(int64_t first, const float* smem, float (&v)[16]) const {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(packed + first / 2));
    const uint32_t words[2] = {raw.x, raw.y};
#pragma unroll
    for (int w = 0; w < 2; ++w) {
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const uint32_t byte = words[w] >> (8 * b);  // little-endian: byte b of the word
        v[8 * w + 2 * b] = smem[(byte >> 4) & 0xF];
        v[8 * w + 2 * b + 1] = smem[byte & 0xF];
      }
    }
  }

  __device__ float decode(int64_t i, const float* smem) const {
    const uint32_t byte = packed[i / 2];
    return smem[i % 2 == 0 ? byte >> 4 : byte & 0xF];
  }
};

}  // namespace

at::Tensor dequantize_4bit(const at::Tensor& packed, const at::Tensor& absmax,
                           const at::Tensor& code, int64_t n, int64_t blocksize,
                           at::ScalarType out_dtype) {
  const c10::cuda::CUDAGuard guard(packed.device());
  const at::Tensor bytes = packed.reshape({-1}).contiguous();
  const at::Tensor scales = absmax.reshape({-1}).contiguous();
  const at::Tensor table = code.reshape({-1}).contiguous();
  const Nibbles codec{table.data_ptr<float>(), bytes.data_ptr<uint8_t>()};
  return launch_dequantize("dequantize_4bit", codec, aligned(codec.packed, 8), scales, n, blocksize,
                           out_dtype, packed.options());
}

}  // namespace qtrain::cuda

// CPU reference of bitsandbytes' blockwise kernels: one plain loop per block, blocks in parallel.
// The float32 arithmetic follows csrc/kernels.cu (kQuantizeBlockwise / kDequantizeBlockwise) so
// the codes and absmax are bit-identical to the CUDA kernels:
//   absmax = max |x| over the block (like fmaxf, NaN inputs are skipped),
//   xn     = x * (1.0f / absmax)   (float32 reciprocal, then a multiply; never a division),
//   value  = code[q] * absmax      (float32, then one cast to the output type).
// The 4-bit quantize and dequantize and the INT8 quantize keep their scalar loops here as the
// reference and run an AVX-512 or AVX2 kernel (quant/dequantize_4bit_simd.h,
// quant/quantize_simd.h) when the CPU has one; they write the same bits.
#include "quant/blockwise_cpu.h"

#include "core/error.h"
#include "quant/codebook_tables.h"
#include "quant/dequantize_4bit_simd.h"
#include "quant/quantize_simd.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

namespace qtrain::cpu {
namespace {

// The tables of quant/codebook_tables.h as static arrays, since the lookups below index them at
// run time. NF4: the code is the number of thresholds that xn exceeds, so a value exactly on a
// threshold takes the lower code.
constexpr std::array<float, codebook::kNF4Thresholds> kNF4Thresholds =
    codebook::table<float, codebook::kNF4Thresholds>(codebook::nf4_threshold);

// CUDA's dQuantizeFP4: thresholds on |xn| between the sorted FP4 magnitudes, and the 3-bit code
// of each magnitude rank (0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1).
constexpr std::array<float, codebook::kFP4Thresholds> kFP4Thresholds =
    codebook::table<float, codebook::kFP4Thresholds>(codebook::fp4_threshold);
constexpr std::array<uint8_t, codebook::kFP4Ranks> kFP4MagnitudeCode =
    codebook::table<uint8_t, codebook::kFP4Ranks>(codebook::fp4_code_of_rank);

// The number of thresholds below xn, found by CUDA's tree (t[7], then t[3] or t[11], ...) as a
// branchless binary search. NaN (an all-zero block: 0 * (1/0)) passes no comparison: code 0.
inline uint8_t nf4_code_of(float xn) {
  int q = 0;
  q += xn > kNF4Thresholds[q + 7] ? 8 : 0;
  q += xn > kNF4Thresholds[q + 3] ? 4 : 0;
  q += xn > kNF4Thresholds[q + 1] ? 2 : 0;
  q += xn > kNF4Thresholds[q] ? 1 : 0;
  return static_cast<uint8_t>(q);
}

// The sign bit is set for any xn < 0, so tiny negatives become 0b1000 ("-0"); NaN becomes 0.
inline uint8_t fp4_code_of(float xn) {
  const uint8_t sign = xn < 0.0f ? 0b1000 : 0;
  const float magnitude = std::fabs(xn);
  int rank = 0;  // thresholds below |xn|, by CUDA's tree: t[3], then t[1] or t[5], ...
  rank += magnitude > kFP4Thresholds[rank + 3] ? 4 : 0;
  rank += magnitude > kFP4Thresholds[rank + 1] ? 2 : 0;
  rank += magnitude > kFP4Thresholds[rank] ? 1 : 0;
  return sign | kFP4MagnitudeCode[rank];
}

int64_t num_blocks(int64_t n, int64_t blocksize) {
  return (n + blocksize - 1) / blocksize;
}

// Blocks per parallel task: about 32K elements of work each.
int64_t grain(int64_t blocksize) {
  return std::max<int64_t>(1, 32768 / blocksize);
}

// CUDA's fmaxf reduction from -FLT_MAX, written as a comparison (no libm call): a NaN never
// compares greater, so it is skipped, and an all-NaN block gives -FLT_MAX on both.
template <typename T>
float block_absmax(const T* x, int64_t count) {
  float m = -FLT_MAX;
  for (int64_t i = 0; i < count; ++i) {
    const float a = std::fabs(static_cast<float>(x[i]));
    m = a > m ? a : m;
  }
  return m;
}

// Calls fn(b, begin, count) for every block, in parallel over blocks.
template <typename Fn>
void for_each_block(int64_t n, int64_t blocksize, const Fn& fn) {
  at::parallel_for(0, num_blocks(n, blocksize), grain(blocksize), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * blocksize;
      fn(b, begin, std::min(blocksize, n - begin));
    }
  });
}

struct NF4Coder {
  uint8_t operator()(float xn) const { return nf4_code_of(xn); }
};
struct FP4Coder {
  uint8_t operator()(float xn) const { return fp4_code_of(xn); }
};

// in [n] -> out [(n+1)/2] packed codes (element 2k in the high nibble), absmax [nblocks]; the
// scalar reference over blocks [b0, b1). blocksize is even, so every block owns whole bytes.
template <typename T, typename Coder>
void quantize_4bit_blocks_scalar(const T* in, int64_t n, int64_t blocksize, Coder code_of,
                                 uint8_t* out, float* absmax, int64_t b0, int64_t b1) {
  std::vector<uint8_t> codes(blocksize + 1);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t count = std::min(blocksize, n - begin);
    const float m = block_absmax(in + begin, count);
    const float inv = 1.0f / m;
    absmax[b] = m;
    for (int64_t i = 0; i < count; ++i) {
      codes[i] = code_of(static_cast<float>(in[begin + i]) * inv);
    }
    codes[count] = code_of(0.0f * inv);  // odd n: the last low nibble codes a 0 pad (as CUDA)
    for (int64_t j = 0; j < count; j += 2) {
      out[(begin + j) / 2] = static_cast<uint8_t>(codes[j] << 4 | codes[j + 1]);
    }
  }
}

template <typename T>
constexpr bool kHasSimdKernel =
    std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

// The blocks a vectorized quantize may take: all the full ones when the blocksize suits it.
int64_t simd_quantize_blocks(SimdPath path, int64_t n, int64_t blocksize) {
  if (path == SimdPath::kScalar || blocksize % simd::kSimdQuantizeMultiple != 0) return 0;
  return n / blocksize;
}

template <typename T>
void quantize_int8_simd(SimdPath path, const simd::QuantizeInt8Args<T>& args, int64_t b0,
                        int64_t b1) {
  if constexpr (kHasSimdKernel<T>) {
    if (path == SimdPath::kAvx512) simd::quantize_int8_avx512(args, b0, b1);
    if (path == SimdPath::kAvx2) simd::quantize_int8_avx2(args, b0, b1);
  }
}

template <typename T, typename Coder>
void quantize_4bit_blocks(const T* in, int64_t n, int64_t blocksize, Coder code_of,
                          simd::Code4bit code, uint8_t* out, float* absmax) {
  const SimdPath path = simd_path();
  const int64_t vector_blocks = kHasSimdKernel<T> ? simd_quantize_blocks(path, n, blocksize) : 0;
  at::parallel_for(0, num_blocks(n, blocksize), grain(blocksize), [&](int64_t b0, int64_t b1) {
    const int64_t split = std::clamp(vector_blocks, b0, b1);
    if constexpr (kHasSimdKernel<T>) {
      const simd::Quantize4bitArgs<T> args{in, blocksize, code, out, absmax};
      if (split > b0 && path == SimdPath::kAvx512) simd::quantize_4bit_avx512(args, b0, split);
      if (split > b0 && path == SimdPath::kAvx2) simd::quantize_4bit_avx2(args, b0, split);
    }
    quantize_4bit_blocks_scalar(in, n, blocksize, code_of, out, absmax, split, b1);
  });
}

at::Tensor flat_contiguous(const at::Tensor& t) {
  return t.reshape({-1}).contiguous();
}

using simd::Dequantize4bitArgs;

// The scalar reference: per block, the 16 values code[q] * absmax rounded once to T, then one
// table lookup per element.
template <typename T>
void dequantize_4bit_blocks_scalar(const Dequantize4bitArgs& args, int64_t block_begin,
                                   int64_t block_end, T* out) {
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t begin = b * args.blocksize;
    const int64_t end = std::min(begin + args.blocksize, args.n);
    std::array<T, 16> scaled;
    for (int q = 0; q < 16; ++q) scaled[q] = static_cast<T>(args.code[q] * args.absmax[b]);
    // begin is even (so is blocksize): elements i, i+1 share byte i/2.
    for (int64_t i = begin; i < end; i += 2) {
      const uint8_t byte = args.packed[i / 2];
      out[i] = scaled[byte >> 4];
      if (i + 1 < end) out[i + 1] = scaled[byte & 0x0F];
    }
  }
}

template <typename T>
void dequantize_4bit_blocks(SimdPath path, const Dequantize4bitArgs& args, int64_t block_begin,
                            int64_t block_end, T* out) {
  if constexpr (kHasSimdKernel<T>) {
    if (path == SimdPath::kAvx512) {
      return simd::dequantize_4bit_avx512(args, block_begin, block_end, out);
    }
    if (path == SimdPath::kAvx2) {
      return simd::dequantize_4bit_avx2(args, block_begin, block_end, out);
    }
  }
  dequantize_4bit_blocks_scalar(args, block_begin, block_end, out);
}

SimdPath widest_supported_path() {
  static const SimdPath widest = simd::cpu_has_avx512() ? SimdPath::kAvx512
                                 : simd::cpu_has_avx2() ? SimdPath::kAvx2
                                                        : SimdPath::kScalar;
  return widest;
}

std::atomic<SimdPath> g_simd_path{SimdPath::kAuto};

// A new output this large asks for transparent huge pages before its first write: its 4 KiB page
// faults (8192 for a 4096x4096 bf16 weight) cost several times the vectorized kernel itself.
constexpr int64_t kHugePageAdviceBytes = int64_t{4} << 20;

// Advice only, on the 2 MiB-aligned part inside [data, data + bytes); a failure changes nothing.
void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + static_cast<uintptr_t>(bytes)) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

// A new output, with huge pages asked for when it is large enough to matter.
at::Tensor empty_for_kernel(at::IntArrayRef sizes, at::ScalarType dtype) {
  at::Tensor result = at::empty(sizes, dtype);
  if (static_cast<int64_t>(result.nbytes()) >= kHugePageAdviceBytes) {
    advise_huge_pages(result.data_ptr(), static_cast<int64_t>(result.nbytes()));
  }
  return result;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> quantize_4bit(const at::Tensor& x, QuantType type,
                                                int64_t blocksize) {
  const at::Tensor input = flat_contiguous(x);
  const int64_t n = input.numel();
  at::Tensor packed = empty_for_kernel({(n + 1) / 2}, at::kByte);
  at::Tensor absmax = at::empty({num_blocks(n, blocksize)}, at::kFloat);
  uint8_t* out = packed.data_ptr<uint8_t>();
  float* scales = absmax.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "quantize_4bit", [&] {
        const scalar_t* in = input.data_ptr<scalar_t>();
        if (type == QuantType::kNF4) {
          quantize_4bit_blocks(in, n, blocksize, NF4Coder{}, simd::Code4bit::kNF4, out, scales);
        } else {
          quantize_4bit_blocks(in, n, blocksize, FP4Coder{}, simd::Code4bit::kFP4, out, scales);
        }
      });
  return {packed, absmax};
}

at::Tensor dequantize_4bit(const at::Tensor& packed, const at::Tensor& absmax,
                           const at::Tensor& code, int64_t n, int64_t blocksize,
                           at::ScalarType out_dtype) {
  at::Tensor result = empty_for_kernel({n}, out_dtype);
  dequantize_4bit_into(packed, absmax, code, n, blocksize, result);
  return result;
}

void dequantize_4bit_into(const at::Tensor& packed, const at::Tensor& absmax,
                          const at::Tensor& code, int64_t n, int64_t blocksize, at::Tensor& out) {
  if (!out.is_contiguous() || out.numel() != n || !out.device().is_cpu()) {
    throw_error(ErrorKind::kInternal,
                "dequantize_4bit_into: the output must be a contiguous CPU tensor of n elements");
  }
  const at::Tensor bytes = flat_contiguous(packed);
  const at::Tensor scales = flat_contiguous(absmax);
  const at::Tensor table = flat_contiguous(code);
  const Dequantize4bitArgs args{bytes.data_ptr<uint8_t>(), scales.data_ptr<float>(),
                                table.data_ptr<float>(), n, blocksize};
  const SimdPath path = simd_path();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(), "dequantize_4bit", [&] {
        scalar_t* dst = out.data_ptr<scalar_t>();
        at::parallel_for(
            0, num_blocks(n, blocksize), grain(blocksize),
            [&](int64_t b0, int64_t b1) { dequantize_4bit_blocks(path, args, b0, b1, dst); });
      });
}

bool simd_path_supported(SimdPath path) {
  switch (path) {
    case SimdPath::kAuto:
    case SimdPath::kScalar:
      return true;
    case SimdPath::kAvx2:
      return simd::cpu_has_avx2();
    case SimdPath::kAvx512:
      return simd::cpu_has_avx512();
  }
  return false;
}

void set_simd_path(SimdPath path) {
  if (!simd_path_supported(path)) {
    throw_error(ErrorKind::kUnsupported,
                std::string("dequantize_4bit: this CPU has no ") + simd_path_name(path) + " path");
  }
  g_simd_path.store(path);
}

SimdPath simd_path() {
  const SimdPath path = g_simd_path.load();
  return path == SimdPath::kAuto ? widest_supported_path() : path;
}

const char* simd_path_name(SimdPath path) {
  switch (path) {
    case SimdPath::kAuto:
      return "auto";
    case SimdPath::kScalar:
      return "scalar";
    case SimdPath::kAvx2:
      return "avx2";
    case SimdPath::kAvx512:
      return "avx512";
  }
  return "unknown";
}

// The midpoint rule of formats.md §1.3: the code is the number of float32 midpoints
// (code[k] + code[k+1]) * 0.5f strictly below xn, i.e. the nearest value with ties to the lower
// one (bitsandbytes' bucketize backend). CUDA's dQuantize binary search breaks exact ties between
// code[2m-1] and code[2m] towards 2m instead; no other input differs. NaN gives code 0.
std::pair<at::Tensor, at::Tensor> quantize_blockwise_8bit(const at::Tensor& x,
                                                          const at::Tensor& code,
                                                          int64_t blocksize) {
  const at::Tensor input = flat_contiguous(x);
  const at::Tensor table = flat_contiguous(code);
  const int64_t n = input.numel();
  std::array<float, 255> midpoints;
  const float* values = table.data_ptr<float>();
  for (int k = 0; k < 255; ++k) midpoints[k] = (values[k] + values[k + 1]) * 0.5f;
  at::Tensor codes = at::empty({n}, at::kByte);
  at::Tensor absmax = at::empty({num_blocks(n, blocksize)}, at::kFloat);
  uint8_t* out = codes.data_ptr<uint8_t>();
  float* scales = absmax.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "quantize_blockwise_8bit", [&] {
        const scalar_t* in = input.data_ptr<scalar_t>();
        for_each_block(n, blocksize, [&](int64_t b, int64_t begin, int64_t count) {
          const float m = block_absmax(in + begin, count);
          const float inv = 1.0f / m;
          scales[b] = m;
          for (int64_t i = begin; i < begin + count; ++i) {
            const float xn = static_cast<float>(in[i]) * inv;
            out[i] = static_cast<uint8_t>(std::lower_bound(midpoints.begin(), midpoints.end(), xn) -
                                          midpoints.begin());
          }
        });
      });
  return {codes, absmax};
}

at::Tensor dequantize_blockwise_8bit(const at::Tensor& codes, const at::Tensor& absmax,
                                     const at::Tensor& code, int64_t blocksize,
                                     at::ScalarType out_dtype) {
  const at::Tensor input = flat_contiguous(codes);
  const at::Tensor scales = flat_contiguous(absmax);
  const at::Tensor table = flat_contiguous(code);
  const int64_t n = input.numel();
  at::Tensor result = at::empty({n}, out_dtype);
  const uint8_t* in = input.data_ptr<uint8_t>();
  const float* am = scales.data_ptr<float>();
  const float* values = table.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out_dtype, "dequantize_blockwise_8bit", [&] {
        scalar_t* out = result.data_ptr<scalar_t>();
        for_each_block(n, blocksize, [&](int64_t b, int64_t begin, int64_t count) {
          for (int64_t i = begin; i < begin + count; ++i) {
            out[i] = static_cast<scalar_t>(values[in[i]] * am[b]);
          }
        });
      });
  return result;
}

// Linear INT8: q = round_half_away_from_zero(x * (127.0f / absmax)), all in float32, clamped to
// [-127, 127] (only reachable through the rounding of 127/absmax). An all-zero block (absmax 0)
// and NaN inputs give q = 0.
std::pair<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& x, int64_t blocksize) {
  const at::Tensor input = flat_contiguous(x);
  const int64_t n = input.numel();
  at::Tensor q = empty_for_kernel({n}, at::kChar);
  at::Tensor absmax = at::empty({num_blocks(n, blocksize)}, at::kFloat);
  int8_t* out = q.data_ptr<int8_t>();
  float* scales = absmax.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "quantize_int8", [&] {
        const scalar_t* in = input.data_ptr<scalar_t>();
        const SimdPath path = simd_path();
        const int64_t vector_blocks =
            kHasSimdKernel<scalar_t> ? simd_quantize_blocks(path, n, blocksize) : 0;
        const auto scalar_block = [&](int64_t b) {
          const int64_t begin = b * blocksize;
          const int64_t count = std::min(blocksize, n - begin);
          const float m = block_absmax(in + begin, count);
          const float multiplier = m > 0.0f ? 127.0f / m : 0.0f;
          scales[b] = m;
          for (int64_t i = begin; i < begin + count; ++i) {
            const float r = std::round(static_cast<float>(in[i]) * multiplier);
            out[i] = std::isnan(r) ? 0 : static_cast<int8_t>(std::clamp(r, -127.0f, 127.0f));
          }
        };
        at::parallel_for(
            0, num_blocks(n, blocksize), grain(blocksize), [&](int64_t b0, int64_t b1) {
              const int64_t split = std::clamp(vector_blocks, b0, b1);
              if (split > b0)
                quantize_int8_simd(
                    path, simd::QuantizeInt8Args<scalar_t>{in, blocksize, out, scales}, b0, split);
              for (int64_t b = split; b < b1; ++b) scalar_block(b);
            });
      });
  return {q, absmax};
}

// value = q * (absmax / 127.0f) in float32, then cast.
at::Tensor dequantize_int8(const at::Tensor& q, const at::Tensor& absmax, int64_t blocksize,
                           at::ScalarType out_dtype) {
  const at::Tensor input = flat_contiguous(q);
  const at::Tensor scales = flat_contiguous(absmax);
  const int64_t n = input.numel();
  at::Tensor result = at::empty({n}, out_dtype);
  const int8_t* in = input.data_ptr<int8_t>();
  const float* am = scales.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "dequantize_int8", [&] {
    scalar_t* out = result.data_ptr<scalar_t>();
    for_each_block(n, blocksize, [&](int64_t b, int64_t begin, int64_t count) {
      const float step = am[b] / 127.0f;
      for (int64_t i = begin; i < begin + count; ++i) {
        out[i] = static_cast<scalar_t>(static_cast<float>(in[i]) * step);
      }
    });
  });
  return result;
}

}  // namespace qtrain::cpu

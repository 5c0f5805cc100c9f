// AVX-512 (F + BW) 4-bit dequantize. Per block, the 16 scaled code values fit one register:
// 16 float32 products, or 16 16-bit values rounded once from them. Each 16 packed bytes (32
// elements) are widened so that every 16-bit lane holds one nibble in element order, then one
// vpermw (16-bit outputs) or two vpermps (float32) look the values up. A block's last partial
// group uses masked loads and stores, so nothing outside the block is read or written.
#include "quant/dequantize_4bit_simd.h"

#include "core/error.h"

#include <algorithm>
#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the intrinsics' own _mm*_undefined_*() placeholders once inlined (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define QTRAIN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw")))

namespace qtrain::cpu::simd {
namespace {

// 16 packed bytes -> 32 16-bit lanes in element order: lane 2k = high nibble of byte k (element
// 2k), lane 2k+1 = its low nibble.
QTRAIN_TARGET_AVX512 inline __m512i nibble_lanes(__m128i bytes) {
  const __m512i x = _mm512_cvtepu8_epi32(bytes);
  return _mm512_or_si512(_mm512_srli_epi32(x, 4),
                         _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0xF)), 16));
}

// The bytes of `count` elements (0 < count < 32) starting at an even element; none beyond.
QTRAIN_TARGET_AVX512 inline __m128i load_partial(const uint8_t* src, int64_t count) {
  const __mmask64 bytes = (__mmask64{1} << ((count + 1) / 2)) - 1;
  return _mm512_castsi512_si128(_mm512_maskz_loadu_epi8(bytes, src));
}

// 16-bit values in dword lanes -> the 16 words in the low half of a register (upper half zero).
QTRAIN_TARGET_AVX512 inline __m512i words_table(__m512i dwords) {
  return _mm512_inserti64x4(_mm512_setzero_si512(), _mm512_cvtepi32_epi16(dwords), 0);
}

// c10::BFloat16(float): (bits + 0x7FFF + lsb) >> 16, NaN -> 0x7FC0.
QTRAIN_TARGET_AVX512 inline __m512i bf16_table(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return words_table(_mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0)));
}

// c10::Half(float) (fp16_ieee_from_fp32_value): the hardware round-to-nearest-even conversion
// for numbers; NaN -> sign | 0x7E00 (the hardware would keep payload bits).
QTRAIN_TARGET_AVX512 inline __m512i f16_table(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i rounded = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  const __m512i nan_bits =
      _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000)),
                      _mm512_set1_epi32(0x7E00));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return words_table(_mm512_mask_mov_epi32(rounded, nan, nan_bits));
}

// Elements [0, count) of one block from the bytes at `src`, 16-bit values from `table`.
QTRAIN_TARGET_AVX512 void block_words(const uint8_t* src, int64_t count, __m512i table,
                                      uint16_t* dst) {
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i / 2));
    _mm512_storeu_si512(dst + i, _mm512_permutexvar_epi16(nibble_lanes(bytes), table));
  }
  if (i < count) {
    const __m512i values =
        _mm512_permutexvar_epi16(nibble_lanes(load_partial(src + i / 2, count - i)), table);
    _mm512_mask_storeu_epi16(dst + i, (__mmask32{1} << (count - i)) - 1, values);
  }
}

QTRAIN_TARGET_AVX512 void block_floats(const uint8_t* src, int64_t count, __m512 table,
                                       float* dst) {
  int64_t i = 0;
  for (; i < count; i += 32) {
    const int64_t left = count - i;
    const __m128i bytes = left >= 32
                              ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i / 2))
                              : load_partial(src + i / 2, left);
    const __m512i lanes = nibble_lanes(bytes);
    const __m512 first =
        _mm512_permutexvar_ps(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(lanes)), table);
    const __m512 second =
        _mm512_permutexvar_ps(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(lanes, 1)), table);
    if (left >= 32) {
      _mm512_storeu_ps(dst + i, first);
      _mm512_storeu_ps(dst + i + 16, second);
    } else {
      const auto mask = [](int64_t k) {
        return static_cast<__mmask16>(k >= 16 ? 0xFFFF : k <= 0 ? 0 : (1u << k) - 1);
      };
      _mm512_mask_storeu_ps(dst + i, mask(left), first);
      _mm512_mask_storeu_ps(dst + i + 16, mask(left - 16), second);
    }
  }
}

template <typename T>
QTRAIN_TARGET_AVX512 void dequantize_blocks(const Dequantize4bitArgs& args, int64_t block_begin,
                                            int64_t block_end, T* out) {
  const __m512 code = _mm512_loadu_ps(args.code);
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t begin = b * args.blocksize;
    const int64_t count = std::min(args.blocksize, args.n - begin);
    const uint8_t* src = args.packed + begin / 2;  // begin is even: a byte boundary
    const __m512 scaled = _mm512_mul_ps(code, _mm512_set1_ps(args.absmax[b]));
    if constexpr (std::is_same_v<T, float>) {
      block_floats(src, count, scaled, out + begin);
    } else {
      const __m512i table =
          std::is_same_v<T, c10::BFloat16> ? bf16_table(scaled) : f16_table(scaled);
      block_words(src, count, table, reinterpret_cast<uint16_t*>(out + begin));
    }
  }
}

}  // namespace

bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

void dequantize_4bit_avx512(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                            float* out) {
  dequantize_blocks(args, block_begin, block_end, out);
}
void dequantize_4bit_avx512(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                            c10::BFloat16* out) {
  dequantize_blocks(args, block_begin, block_end, out);
}
void dequantize_4bit_avx512(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                            c10::Half* out) {
  dequantize_blocks(args, block_begin, block_end, out);
}

}  // namespace qtrain::cpu::simd

#else  // not x86-64: only the scalar reference runs

namespace qtrain::cpu::simd {

bool cpu_has_avx512() {
  return false;
}

template <typename T>
[[noreturn]] void unavailable(const Dequantize4bitArgs&, int64_t, int64_t, T*) {
  throw_error(ErrorKind::kInternal, "dequantize_4bit: AVX-512 is not built on this architecture");
}
void dequantize_4bit_avx512(const Dequantize4bitArgs& a, int64_t b0, int64_t b1, float* out) {
  unavailable(a, b0, b1, out);
}
void dequantize_4bit_avx512(const Dequantize4bitArgs& a, int64_t b0, int64_t b1,
                            c10::BFloat16* out) {
  unavailable(a, b0, b1, out);
}
void dequantize_4bit_avx512(const Dequantize4bitArgs& a, int64_t b0, int64_t b1, c10::Half* out) {
  unavailable(a, b0, b1, out);
}

}  // namespace qtrain::cpu::simd

#endif

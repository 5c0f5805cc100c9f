// AVX2 (+ F16C) 4-bit dequantize. Per block the 16 scaled code values are rounded once; 16-bit
// outputs are then looked up with two vpshufb (a table of the values' low bytes and one of their
// high bytes) whose results are interleaved back into words, float32 with two vpermps over the
// 8-value halves and a blend on bit 3 of the nibble. Each step turns 16 packed bytes into 32
// elements; a block's last partial group goes through a small stack buffer.
#include "quant/dequantize_4bit_simd.h"

#include "core/error.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the intrinsics' own _mm*_undefined_*() placeholders once inlined (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define QTRAIN_TARGET_AVX2 __attribute__((target("avx2,f16c")))

namespace qtrain::cpu::simd {
namespace {

struct WordTable {
  __m256i low;   // the values' low bytes, the same 16 in both 128-bit lanes
  __m256i high;  // their high bytes
};

struct FloatTable {
  __m256 first;   // values 0..7
  __m256 second;  // values 8..15
};

// 16 packed bytes -> 32 nibbles, one per byte, in element order (high nibble first).
QTRAIN_TARGET_AVX2 inline __m256i nibble_bytes(__m128i bytes) {
  const __m256i x = _mm256_cvtepu8_epi16(bytes);
  return _mm256_or_si256(_mm256_srli_epi16(x, 4),
                         _mm256_slli_epi16(_mm256_and_si256(x, _mm256_set1_epi16(0xF)), 8));
}

// c10::BFloat16(float) on 8 lanes, as dwords.
QTRAIN_TARGET_AVX2 inline __m256i bf16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
}

// c10::Half(float) on 8 lanes, as dwords: hardware rounding for numbers, NaN -> sign | 0x7E00.
QTRAIN_TARGET_AVX2 inline __m256i f16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i rounded = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  const __m256i nan_bits =
      _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x8000)),
                      _mm256_set1_epi32(0x7E00));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, nan_bits, nan);
}

// Values 0..7 and 8..15 as dwords -> the byte tables.
QTRAIN_TARGET_AVX2 inline WordTable word_table(__m256i first, __m256i second) {
  // packus interleaves the 128-bit lanes; 0xD8 puts the 16 words back in order.
  const __m256i words = _mm256_permute4x64_epi64(_mm256_packus_epi32(first, second), 0xD8);
  // Per lane: the 8 low bytes, then the 8 high bytes; then all low bytes in lane 0.
  const __m256i split = _mm256_shuffle_epi8(
      words, _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8,
                              10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
  const __m256i bytes = _mm256_permute4x64_epi64(split, 0xD8);
  return {_mm256_permute2x128_si256(bytes, bytes, 0x00),
          _mm256_permute2x128_si256(bytes, bytes, 0x11)};
}

QTRAIN_TARGET_AVX2 inline void store32(__m128i bytes, const WordTable& table, uint16_t* dst) {
  const __m256i nibbles = nibble_bytes(bytes);
  const __m256i low = _mm256_shuffle_epi8(table.low, nibbles);
  const __m256i high = _mm256_shuffle_epi8(table.high, nibbles);
  const __m256i a = _mm256_unpacklo_epi8(low, high);  // elements 0..7 | 16..23
  const __m256i b = _mm256_unpackhi_epi8(low, high);  // elements 8..15 | 24..31
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permute2x128_si256(a, b, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16), _mm256_permute2x128_si256(a, b, 0x31));
}

// 8 nibbles in the low 8 bytes -> their 8 float values.
QTRAIN_TARGET_AVX2 inline __m256 lookup8(__m128i nibbles, const FloatTable& table) {
  const __m256i index = _mm256_cvtepu8_epi32(nibbles);
  const __m256 low = _mm256_permutevar8x32_ps(table.first, index);
  const __m256 high = _mm256_permutevar8x32_ps(table.second, index);
  return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));
}

QTRAIN_TARGET_AVX2 inline void store32(__m128i bytes, const FloatTable& table, float* dst) {
  const __m256i nibbles = nibble_bytes(bytes);
  const __m128i first = _mm256_castsi256_si128(nibbles);
  const __m128i second = _mm256_extracti128_si256(nibbles, 1);
  _mm256_storeu_ps(dst, lookup8(first, table));
  _mm256_storeu_ps(dst + 8, lookup8(_mm_srli_si128(first, 8), table));
  _mm256_storeu_ps(dst + 16, lookup8(second, table));
  _mm256_storeu_ps(dst + 24, lookup8(_mm_srli_si128(second, 8), table));
}

// Elements [0, count) of one block: whole groups of 32, then the rest through a buffer.
template <typename Table, typename U>
QTRAIN_TARGET_AVX2 void block(const uint8_t* src, int64_t count, const Table& table, U* dst) {
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    store32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i / 2)), table, dst + i);
  }
  if (i < count) {
    const int64_t left = count - i;
    uint8_t bytes[16] = {};
    std::memcpy(bytes, src + i / 2, static_cast<size_t>((left + 1) / 2));
    U values[32];
    store32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)), table, values);
    std::memcpy(dst + i, values, static_cast<size_t>(left) * sizeof(U));
  }
}

template <typename T>
QTRAIN_TARGET_AVX2 void dequantize_blocks(const Dequantize4bitArgs& args, int64_t block_begin,
                                          int64_t block_end, T* out) {
  const __m256 code_first = _mm256_loadu_ps(args.code);
  const __m256 code_second = _mm256_loadu_ps(args.code + 8);
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t begin = b * args.blocksize;
    const int64_t count = std::min(args.blocksize, args.n - begin);
    const uint8_t* src = args.packed + begin / 2;  // begin is even: a byte boundary
    const __m256 scale = _mm256_set1_ps(args.absmax[b]);
    const FloatTable scaled{_mm256_mul_ps(code_first, scale), _mm256_mul_ps(code_second, scale)};
    if constexpr (std::is_same_v<T, float>) {
      block(src, count, scaled, out + begin);
    } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
      const WordTable table = word_table(bf16_bits(scaled.first), bf16_bits(scaled.second));
      block(src, count, table, reinterpret_cast<uint16_t*>(out + begin));
    } else {
      const WordTable table = word_table(f16_bits(scaled.first), f16_bits(scaled.second));
      block(src, count, table, reinterpret_cast<uint16_t*>(out + begin));
    }
  }
}

}  // namespace

bool cpu_has_avx2() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  return f16c && __builtin_cpu_supports("avx2");
}

void dequantize_4bit_avx2(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                          float* out) {
  dequantize_blocks(args, block_begin, block_end, out);
}
void dequantize_4bit_avx2(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                          c10::BFloat16* out) {
  dequantize_blocks(args, block_begin, block_end, out);
}
void dequantize_4bit_avx2(const Dequantize4bitArgs& args, int64_t block_begin, int64_t block_end,
                          c10::Half* out) {
  dequantize_blocks(args, block_begin, block_end, out);
}

}  // namespace qtrain::cpu::simd

#else  // not x86-64: only the scalar reference runs

namespace qtrain::cpu::simd {

bool cpu_has_avx2() {
  return false;
}

template <typename T>
[[noreturn]] void unavailable(const Dequantize4bitArgs&, int64_t, int64_t, T*) {
  throw_error(ErrorKind::kInternal, "dequantize_4bit: AVX2 is not built on this architecture");
}
void dequantize_4bit_avx2(const Dequantize4bitArgs& a, int64_t b0, int64_t b1, float* out) {
  unavailable(a, b0, b1, out);
}
void dequantize_4bit_avx2(const Dequantize4bitArgs& a, int64_t b0, int64_t b1, c10::BFloat16* out) {
  unavailable(a, b0, b1, out);
}
void dequantize_4bit_avx2(const Dequantize4bitArgs& a, int64_t b0, int64_t b1, c10::Half* out) {
  unavailable(a, b0, b1, out);
}

}  // namespace qtrain::cpu::simd

#endif

// AVX2 (+ F16C) blockwise quantize: 8 elements per register, taken 16 at a time split by parity
// (even elements in one register, odd in another), so the two codes of a packed byte share a
// lane. The binary searches of the scalar loop are kept, each step's thresholds looked up by
// vpermps from an 8-entry table of the only thresholds that step can reach (NF4: t7; t3|t11;
// t1|t5|t9|t13; the even ones). Bytes and INT8 pairs are narrowed with packs, whose 128-bit lane
// order one permute undoes.
#include "quant/quantize_simd.h"

#include "core/error.h"
#include "quant/codebook_tables.h"

#include <cfloat>
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the intrinsics' own _mm*_undefined_*() placeholders once inlined (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#define QTRAIN_TARGET_AVX2 __attribute__((target("avx2,f16c")))

namespace qtrain::cpu::simd {
namespace {

// The thresholds each search step can compare with, indexed by the code found so far shifted.
struct Tables {
  alignas(32) float nf4_step4[8];  // t3, t11            (q >> 3)
  alignas(32) float nf4_step2[8];  // t1, t5, t9, t13    (q >> 2)
  alignas(32) float nf4_step1[8];  // t0, t2, ..., t14   (q >> 1)
  alignas(32) float fp4_step2[8];  // t1, t5             (rank >> 2)
  alignas(32) float fp4_step1[8];  // t0, t2, t4, t6     (rank >> 1)
  alignas(32) int32_t fp4_code_of_rank[8];
};

constexpr Tables make_tables() {
  Tables t{};
  for (int k = 0; k < 8; ++k) {
    t.nf4_step4[k] = k < 2 ? codebook::nf4_threshold(8 * k + 3) : FLT_MAX;
    t.nf4_step2[k] = k < 4 ? codebook::nf4_threshold(4 * k + 1) : FLT_MAX;
    t.nf4_step1[k] = codebook::nf4_threshold(2 * k);
    t.fp4_step2[k] = k < 2 ? codebook::fp4_threshold(4 * k + 1) : FLT_MAX;
    t.fp4_step1[k] = k < 4 ? codebook::fp4_threshold(2 * k) : FLT_MAX;
    t.fp4_code_of_rank[k] = codebook::fp4_code_of_rank(k);
  }
  return t;
}
constexpr Tables kTables = make_tables();

// 16 elements as float32 (exact for every input type), split by parity: lane k of `even` is
// element 2k, of `odd` element 2k+1.
struct Pairs {
  __m256 even;
  __m256 odd;
};

QTRAIN_TARGET_AVX2 inline Pairs load_pairs(const c10::BFloat16* p) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(x, 16)),
          _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int32_t(0xFFFF0000u))))};
}
QTRAIN_TARGET_AVX2 inline Pairs load_pairs(const c10::Half* p) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  // Per 128-bit lane [even halves, odd halves], then the lanes' quarters reordered: the low
  // 128 bits hold the 8 even halves, the high 128 the 8 odd ones.
  const __m256i split = _mm256_permute4x64_epi64(
      _mm256_packus_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0xFFFF)), _mm256_srli_epi32(x, 16)),
      _MM_SHUFFLE(3, 1, 2, 0));
  return {_mm256_cvtph_ps(_mm256_castsi256_si128(split)),
          _mm256_cvtph_ps(_mm256_extracti128_si256(split, 1))};
}
// [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6].
QTRAIN_TARGET_AVX2 inline __m256 in_order(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
}

QTRAIN_TARGET_AVX2 inline Pairs load_pairs(const float* p) {
  const __m256 a = _mm256_loadu_ps(p);
  const __m256 b = _mm256_loadu_ps(p + 8);
  return {in_order(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))),
          in_order(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)))};
}

QTRAIN_TARGET_AVX2 inline __m256 abs8(__m256 v) {
  return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MAX)));
}

// count: a multiple of 32. vmaxps returns its second operand (the running maximum) when either is
// NaN, so NaN inputs are skipped as by the scalar comparison.
template <typename T>
QTRAIN_TARGET_AVX2 float block_absmax(const T* x, int64_t count) {
  __m256 m[4];
  for (auto& r : m) r = _mm256_set1_ps(-FLT_MAX);
  for (int64_t i = 0; i < count; i += 32) {
    const Pairs first = load_pairs(x + i);
    const Pairs second = load_pairs(x + i + 16);
    m[0] = _mm256_max_ps(abs8(first.even), m[0]);
    m[1] = _mm256_max_ps(abs8(first.odd), m[1]);
    m[2] = _mm256_max_ps(abs8(second.even), m[2]);
    m[3] = _mm256_max_ps(abs8(second.odd), m[3]);
  }
  const __m256 m8 = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
  return _mm_cvtss_f32(m4);
}

// Adds `step` to q where xn > t, as all-ones compare masks and'ed with step.
QTRAIN_TARGET_AVX2 inline __m256i add_if_above(__m256 xn, __m256 t, __m256i q, int step) {
  const __m256i above = _mm256_castps_si256(_mm256_cmp_ps(xn, t, _CMP_GT_OQ));
  return _mm256_add_epi32(q, _mm256_and_si256(above, _mm256_set1_epi32(step)));
}

QTRAIN_TARGET_AVX2 inline __m256 lookup(const float* table, __m256i index) {
  return _mm256_permutevar8x32_ps(_mm256_load_ps(table), index);
}

QTRAIN_TARGET_AVX2 inline __m256i nf4_codes(__m256 xn) {
  __m256i q =
      add_if_above(xn, _mm256_set1_ps(codebook::nf4_threshold(7)), _mm256_setzero_si256(), 8);
  q = add_if_above(xn, lookup(kTables.nf4_step4, _mm256_srli_epi32(q, 3)), q, 4);
  q = add_if_above(xn, lookup(kTables.nf4_step2, _mm256_srli_epi32(q, 2)), q, 2);
  return add_if_above(xn, lookup(kTables.nf4_step1, _mm256_srli_epi32(q, 1)), q, 1);
}

QTRAIN_TARGET_AVX2 inline __m256i fp4_codes(__m256 xn) {
  const __m256 magnitude = abs8(xn);
  __m256i rank = add_if_above(magnitude, _mm256_set1_ps(codebook::fp4_threshold(3)),
                              _mm256_setzero_si256(), 4);
  rank = add_if_above(magnitude, lookup(kTables.fp4_step2, _mm256_srli_epi32(rank, 2)), rank, 2);
  rank = add_if_above(magnitude, lookup(kTables.fp4_step1, _mm256_srli_epi32(rank, 1)), rank, 1);
  const __m256i code = _mm256_permutevar8x32_epi32(
      _mm256_load_si256(reinterpret_cast<const __m256i*>(kTables.fp4_code_of_rank)), rank);
  const __m256i negative = _mm256_castps_si256(_mm256_cmp_ps(xn, _mm256_setzero_ps(), _CMP_LT_OQ));
  return _mm256_or_si256(code, _mm256_and_si256(negative, _mm256_set1_epi32(0b1000)));
}

// Two registers of 8 dwords holding bytes (0-7 and 8-15) -> 16 bytes in order. The packs work
// per 128-bit lane; vpermd puts the four 4-byte groups back in order.
QTRAIN_TARGET_AVX2 inline __m128i narrow_16_bytes(__m256i first, __m256i second) {
  const __m256i words = _mm256_packs_epi32(first, second);
  const __m256i bytes = _mm256_packus_epi16(words, words);
  return _mm256_castsi256_si128(
      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5)));
}

template <Code4bit kCode>
QTRAIN_TARGET_AVX2 inline __m256i codes_of(__m256 xn) {
  if constexpr (kCode == Code4bit::kNF4) {
    return nf4_codes(xn);
  } else {
    return fp4_codes(xn);
  }
}

template <Code4bit kCode, typename T>
QTRAIN_TARGET_AVX2 void quantize_4bit_blocks(const Quantize4bitArgs<T>& a, int64_t block_begin,
                                             int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; ++b) {
    const T* x = a.in + b * a.blocksize;
    uint8_t* out = a.packed + b * a.blocksize / 2;
    const float m = block_absmax(x, a.blocksize);
    a.absmax[b] = m;
    const __m256 inv = _mm256_set1_ps(1.0f / m);
    for (int64_t i = 0; i < a.blocksize; i += 32) {
      // Byte k = code of element 2k in the high nibble, of 2k+1 in the low one.
      __m256i bytes[2];
      for (int h = 0; h < 2; ++h) {
        const Pairs v = load_pairs(x + i + 16 * h);
        bytes[h] =
            _mm256_or_si256(_mm256_slli_epi32(codes_of<kCode>(_mm256_mul_ps(v.even, inv)), 4),
                            codes_of<kCode>(_mm256_mul_ps(v.odd, inv)));
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 2),
                       narrow_16_bytes(bytes[0], bytes[1]));
    }
  }
}

// v = x * multiplier -> round half away from zero (trunc(v) and v - trunc(v) are exact), NaN -> 0,
// clamped to [-127, 127], as dwords.
QTRAIN_TARGET_AVX2 inline __m256i int8_values(__m256 v) {
  const __m256 whole = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 fraction = abs8(_mm256_sub_ps(v, whole));
  const __m256 sign = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN)));
  const __m256 away = _mm256_or_ps(_mm256_set1_ps(1.0f), sign);
  const __m256 up = _mm256_cmp_ps(fraction, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  __m256 r = _mm256_add_ps(whole, _mm256_and_ps(up, away));
  r = _mm256_and_ps(r, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
  r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
  return _mm256_cvttps_epi32(r);
}

template <typename T>
QTRAIN_TARGET_AVX2 void quantize_int8_blocks(const QuantizeInt8Args<T>& a, int64_t block_begin,
                                             int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; ++b) {
    const T* x = a.in + b * a.blocksize;
    int8_t* out = a.q + b * a.blocksize;
    const float m = block_absmax(x, a.blocksize);
    a.absmax[b] = m;
    const __m256 multiplier = _mm256_set1_ps(m > 0.0f ? 127.0f / m : 0.0f);
    for (int64_t i = 0; i < a.blocksize; i += 32) {
      // Word k (in dword k) = element 2k in its low byte, 2k+1 in its high byte.
      __m256i words[2];
      for (int h = 0; h < 2; ++h) {
        const Pairs v = load_pairs(x + i + 16 * h);
        const __m256i even = int8_values(_mm256_mul_ps(v.even, multiplier));
        const __m256i odd = int8_values(_mm256_mul_ps(v.odd, multiplier));
        words[h] = _mm256_and_si256(_mm256_or_si256(_mm256_and_si256(even, _mm256_set1_epi32(0xFF)),
                                                    _mm256_slli_epi32(odd, 8)),
                                    _mm256_set1_epi32(0xFFFF));
      }
      const __m256i in_lanes = _mm256_packus_epi32(words[0], words[1]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                          _mm256_permute4x64_epi64(in_lanes, _MM_SHUFFLE(3, 1, 2, 0)));
    }
  }
}

}  // namespace

template <typename T>
void quantize_4bit_avx2(const Quantize4bitArgs<T>& a, int64_t block_begin, int64_t block_end) {
  if (a.code == Code4bit::kNF4) {
    quantize_4bit_blocks<Code4bit::kNF4>(a, block_begin, block_end);
  } else {
    quantize_4bit_blocks<Code4bit::kFP4>(a, block_begin, block_end);
  }
}

template <typename T>
void quantize_int8_avx2(const QuantizeInt8Args<T>& a, int64_t block_begin, int64_t block_end) {
  quantize_int8_blocks(a, block_begin, block_end);
}

}  // namespace qtrain::cpu::simd

#else  // not x86-64: only the scalar reference runs

namespace qtrain::cpu::simd {

template <typename T>
void quantize_4bit_avx2(const Quantize4bitArgs<T>&, int64_t, int64_t) {
  throw_error(ErrorKind::kInternal, "quantize: AVX2 is not built on this architecture");
}

template <typename T>
void quantize_int8_avx2(const QuantizeInt8Args<T>&, int64_t, int64_t) {
  throw_error(ErrorKind::kInternal, "quantize: AVX2 is not built on this architecture");
}

}  // namespace qtrain::cpu::simd

#endif

namespace qtrain::cpu::simd {

template void quantize_4bit_avx2(const Quantize4bitArgs<float>&, int64_t, int64_t);
template void quantize_4bit_avx2(const Quantize4bitArgs<c10::BFloat16>&, int64_t, int64_t);
template void quantize_4bit_avx2(const Quantize4bitArgs<c10::Half>&, int64_t, int64_t);
template void quantize_int8_avx2(const QuantizeInt8Args<float>&, int64_t, int64_t);
template void quantize_int8_avx2(const QuantizeInt8Args<c10::BFloat16>&, int64_t, int64_t);
template void quantize_int8_avx2(const QuantizeInt8Args<c10::Half>&, int64_t, int64_t);

}  // namespace qtrain::cpu::simd

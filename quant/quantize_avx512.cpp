// AVX-512 (F + BW) blockwise quantize. Elements are taken 32 at a time split by parity (even ones
// in one register, odd in another; for bfloat16 that is two bit operations on the dwords), so the
// two codes of a packed byte sit in the same lane: byte = even << 4 | odd, then one vpmovdb. Per
// block, one pass takes the absmax, a second codes. NF4 and FP4 follow the scalar binary search,
// each step one vpermps of the thresholds indexed by the code so far.
#include "quant/quantize_simd.h"

#include "core/error.h"
#include "quant/codebook_tables.h"

#include <cfloat>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the intrinsics' own _mm*_undefined_*() placeholders once inlined (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#define QTRAIN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw")))

namespace qtrain::cpu::simd {
namespace {

// The thresholds as 16-lane tables, shifted so that a search step indexes them with the code found
// so far: step s compares with t[q + s - 1]. Lanes past the end are never indexed.
struct Tables {
  alignas(64) float nf4_plus3[16];  // t[j + 3]
  alignas(64) float nf4_plus1[16];  // t[j + 1]
  alignas(64) float nf4[16];        // t[j]
  alignas(64) float fp4_plus1[16];
  alignas(64) float fp4[16];
  alignas(64) int32_t fp4_code_of_rank[16];
};

constexpr float nf4_or_max(int k) {
  return k < codebook::kNF4Thresholds ? codebook::nf4_threshold(k) : FLT_MAX;
}
constexpr float fp4_or_max(int k) {
  return k < codebook::kFP4Thresholds ? codebook::fp4_threshold(k) : FLT_MAX;
}

constexpr Tables make_tables() {
  Tables t{};
  for (int k = 0; k < 16; ++k) {
    t.nf4_plus3[k] = nf4_or_max(k + 3);
    t.nf4_plus1[k] = nf4_or_max(k + 1);
    t.nf4[k] = nf4_or_max(k);
    t.fp4_plus1[k] = fp4_or_max(k + 1);
    t.fp4[k] = fp4_or_max(k);
    t.fp4_code_of_rank[k] = k < codebook::kFP4Ranks ? codebook::fp4_code_of_rank(k) : 0;
  }
  return t;
}
constexpr Tables kTables = make_tables();

// 32 elements as float32 (exact for every input type), split by parity: lane k of `even` is
// element 2k, of `odd` element 2k+1. bfloat16 needs no conversion: each dword already holds a
// pair, element 2k+1 in its high half.
struct Pairs {
  __m512 even;
  __m512 odd;
};

QTRAIN_TARGET_AVX512 inline Pairs load_pairs(const c10::BFloat16* p) {
  const __m512i x = _mm512_loadu_si512(p);
  return {_mm512_castsi512_ps(_mm512_slli_epi32(x, 16)),
          _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(int32_t(0xFFFF0000u))))};
}
QTRAIN_TARGET_AVX512 inline Pairs load_pairs(const c10::Half* p) {
  const __m512i x = _mm512_loadu_si512(p);
  return {_mm512_cvtph_ps(_mm512_cvtepi32_epi16(x)),
          _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(x, 16)))};
}
QTRAIN_TARGET_AVX512 inline Pairs load_pairs(const float* p) {
  const __m512 a = _mm512_loadu_ps(p);
  const __m512 b = _mm512_loadu_ps(p + 16);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  return {_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b)};
}

// count: a multiple of 32. vmaxps returns its second operand (the running maximum) when either is
// NaN, so NaN inputs are skipped as by the scalar comparison.
template <typename T>
QTRAIN_TARGET_AVX512 float block_absmax(const T* x, int64_t count) {
  __m512 m0 = _mm512_set1_ps(-FLT_MAX);
  __m512 m1 = m0;
  for (int64_t i = 0; i < count; i += 32) {
    const Pairs v = load_pairs(x + i);
    m0 = _mm512_max_ps(_mm512_abs_ps(v.even), m0);
    m1 = _mm512_max_ps(_mm512_abs_ps(v.odd), m1);
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

// Adds `step` to q where xn > table[q].
QTRAIN_TARGET_AVX512 inline __m512i search_step(__m512 xn, const float* table, __m512i q,
                                                int step) {
  const __m512 t = _mm512_permutexvar_ps(q, _mm512_load_ps(table));
  return _mm512_mask_add_epi32(q, _mm512_cmp_ps_mask(xn, t, _CMP_GT_OQ), q,
                               _mm512_set1_epi32(step));
}

// The first step of a search compares with one threshold for every lane.
QTRAIN_TARGET_AVX512 inline __m512i first_step(__m512 xn, float threshold, int step) {
  return _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(xn, _mm512_set1_ps(threshold), _CMP_GT_OQ),
                                _mm512_set1_epi32(step));
}

QTRAIN_TARGET_AVX512 inline __m512i nf4_codes(__m512 xn) {
  __m512i q = first_step(xn, codebook::nf4_threshold(7), 8);
  q = search_step(xn, kTables.nf4_plus3, q, 4);
  q = search_step(xn, kTables.nf4_plus1, q, 2);
  return search_step(xn, kTables.nf4, q, 1);
}

QTRAIN_TARGET_AVX512 inline __m512i fp4_codes(__m512 xn) {
  const __m512 magnitude = _mm512_abs_ps(xn);
  __m512i rank = first_step(magnitude, codebook::fp4_threshold(3), 4);
  rank = search_step(magnitude, kTables.fp4_plus1, rank, 2);
  rank = search_step(magnitude, kTables.fp4, rank, 1);
  const __mmask16 negative = _mm512_cmp_ps_mask(xn, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512i code = _mm512_permutexvar_epi32(rank, _mm512_load_si512(kTables.fp4_code_of_rank));
  return _mm512_mask_or_epi32(code, negative, code, _mm512_set1_epi32(0b1000));
}

template <Code4bit kCode>
QTRAIN_TARGET_AVX512 inline __m512i codes_of(__m512 xn) {
  if constexpr (kCode == Code4bit::kNF4) {
    return nf4_codes(xn);
  } else {
    return fp4_codes(xn);
  }
}

template <Code4bit kCode, typename T>
QTRAIN_TARGET_AVX512 void quantize_4bit_blocks(const Quantize4bitArgs<T>& a, int64_t block_begin,
                                               int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; ++b) {
    const T* x = a.in + b * a.blocksize;
    uint8_t* out = a.packed + b * a.blocksize / 2;
    const float m = block_absmax(x, a.blocksize);
    a.absmax[b] = m;
    const __m512 inv = _mm512_set1_ps(1.0f / m);
    for (int64_t i = 0; i < a.blocksize; i += 32) {
      const Pairs v = load_pairs(x + i);
      const __m512i high = codes_of<kCode>(_mm512_mul_ps(v.even, inv));
      const __m512i low = codes_of<kCode>(_mm512_mul_ps(v.odd, inv));
      // Byte k = code of element 2k in the high nibble, of 2k+1 in the low one.
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 2),
                       _mm512_cvtepi32_epi8(_mm512_or_si512(_mm512_slli_epi32(high, 4), low)));
    }
  }
}

// v = x * multiplier -> round half away from zero, NaN -> 0, clamped to [-127, 127]. trunc(v) and
// v - trunc(v) are exact, so the rounding decision is std::round's.
QTRAIN_TARGET_AVX512 inline __m512i int8_values(__m512 v) {
  const __m512 whole = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m512 fraction = _mm512_abs_ps(_mm512_sub_ps(v, whole));
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN));
  const __m512 away =
      _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(_mm512_set1_ps(1.0f)), sign));
  const __mmask16 up = _mm512_cmp_ps_mask(fraction, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
  __m512 r = _mm512_mask_add_ps(whole, up, whole, away);
  r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_setzero_ps());
  r = _mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
  return _mm512_cvttps_epi32(r);
}

template <typename T>
QTRAIN_TARGET_AVX512 void quantize_int8_blocks(const QuantizeInt8Args<T>& a, int64_t block_begin,
                                               int64_t block_end) {
  for (int64_t b = block_begin; b < block_end; ++b) {
    const T* x = a.in + b * a.blocksize;
    int8_t* out = a.q + b * a.blocksize;
    const float m = block_absmax(x, a.blocksize);
    a.absmax[b] = m;
    const __m512 multiplier = _mm512_set1_ps(m > 0.0f ? 127.0f / m : 0.0f);
    for (int64_t i = 0; i < a.blocksize; i += 32) {
      const Pairs v = load_pairs(x + i);
      const __m512i even = int8_values(_mm512_mul_ps(v.even, multiplier));
      const __m512i odd = int8_values(_mm512_mul_ps(v.odd, multiplier));
      // Word k = element 2k in its low byte, 2k+1 in its high byte: the 32 bytes in order.
      const __m512i words = _mm512_or_si512(_mm512_and_si512(even, _mm512_set1_epi32(0xFF)),
                                            _mm512_slli_epi32(odd, 8));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtepi32_epi16(words));
    }
  }
}

}  // namespace

template <typename T>
void quantize_4bit_avx512(const Quantize4bitArgs<T>& a, int64_t block_begin, int64_t block_end) {
  if (a.code == Code4bit::kNF4) {
    quantize_4bit_blocks<Code4bit::kNF4>(a, block_begin, block_end);
  } else {
    quantize_4bit_blocks<Code4bit::kFP4>(a, block_begin, block_end);
  }
}

template <typename T>
void quantize_int8_avx512(const QuantizeInt8Args<T>& a, int64_t block_begin, int64_t block_end) {
  quantize_int8_blocks(a, block_begin, block_end);
}

}  // namespace qtrain::cpu::simd

#else  // not x86-64: only the scalar reference runs

namespace qtrain::cpu::simd {

template <typename T>
void quantize_4bit_avx512(const Quantize4bitArgs<T>&, int64_t, int64_t) {
  throw_error(ErrorKind::kInternal, "quantize: AVX-512 is not built on this architecture");
}

template <typename T>
void quantize_int8_avx512(const QuantizeInt8Args<T>&, int64_t, int64_t) {
  throw_error(ErrorKind::kInternal, "quantize: AVX-512 is not built on this architecture");
}

}  // namespace qtrain::cpu::simd

#endif

namespace qtrain::cpu::simd {

template void quantize_4bit_avx512(const Quantize4bitArgs<float>&, int64_t, int64_t);
template void quantize_4bit_avx512(const Quantize4bitArgs<c10::BFloat16>&, int64_t, int64_t);
template void quantize_4bit_avx512(const Quantize4bitArgs<c10::Half>&, int64_t, int64_t);
template void quantize_int8_avx512(const QuantizeInt8Args<float>&, int64_t, int64_t);
template void quantize_int8_avx512(const QuantizeInt8Args<c10::BFloat16>&, int64_t, int64_t);
template void quantize_int8_avx512(const QuantizeInt8Args<c10::Half>&, int64_t, int64_t);

}  // namespace qtrain::cpu::simd

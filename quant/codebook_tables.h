// The constant tables of bitsandbytes' 4-bit formats, the one copy that the CPU reference
// (quant/codebooks.cpp, quant/blockwise_cpu.cpp) and the CUDA kernels (quant/cuda/) read.
//
// Each table is a constexpr accessor returning from a function-local array: device code can call
// it (the CUDA target builds with --expt-relaxed-constexpr) where it could not read a namespace-
// scope array, and with a constant index (an unrolled loop) it folds to an immediate. Host code
// that indexes a table at run time takes a static copy with table<T, N>(accessor), since GCC
// would rebuild the function-local array on the stack at every call. No ATen here: nvcc and g++
// both include this header.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace qtrain::codebook {

constexpr int kNF4Values = 16;
constexpr int kNF4Thresholds = 15;
constexpr int kFP4Values = 16;
constexpr int kFP4Thresholds = 7;
constexpr int kFP4Ranks = 8;

// bitsandbytes' float32 NF4 table (formats.md §1.1), sorted: the nibble value is the index.
constexpr float nf4_value(int code) {
  constexpr float kValues[kNF4Values] = {
      -1.0f,
      -0.6961928009986877f,
      -0.5250730514526367f,
      -0.39491748809814453f,
      -0.28444138169288635f,
      -0.18477343022823334f,
      -0.09105003625154495f,
      0.0f,
      0.07958029955625534f,
      0.16093020141124725f,
      0.24611230194568634f,
      0.33791524171829224f,
      0.44070982933044434f,
      0.5626170039176941f,
      0.7229568362236023f,
      1.0f,
  };
  return kValues[code];
}

// Decision thresholds of CUDA's dQuantizeNF4 tree (formats.md §1.2), ascending: the code is the
// number of thresholds that xn exceeds, so a value exactly on a threshold takes the lower code.
// Each is the midpoint of two adjacent NF4 values (to 1e-7; tests/quant/test_codebooks.cpp).
constexpr float nf4_threshold(int k) {
  constexpr float kThresholds[kNF4Thresholds] = {
      -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
      -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
      0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
      0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f,
  };
  return kThresholds[k];
}

// FP4 (e2m1, bias 2) in code order, before the division by its largest magnitude 12. Code 8
// ("-0") is +0.0: bitsandbytes lists it as the Python int -0, which is 0, so the quant_map it
// stores has +0.0 there.
constexpr float fp4_raw_value(int code) {
  constexpr float kRaw[kFP4Values] = {0.0f, 0.0625f,  8.0f,  12.0f,  4.0f,  6.0f,  2.0f,  3.0f,
                                      0.0f, -0.0625f, -8.0f, -12.0f, -4.0f, -6.0f, -2.0f, -3.0f};
  return kRaw[code];
}

// CUDA's dQuantizeFP4: thresholds on |xn| between the sorted FP4 magnitudes,
// ascending; the magnitude rank is the number of thresholds that |xn| exceeds.
constexpr float fp4_threshold(int k) {
  constexpr float kThresholds[kFP4Thresholds] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                                 0.4166667f,  0.583333f,  0.8333333f};
  return kThresholds[k];
}

// The 3-bit FP4 code (sign bit clear) of each magnitude rank: magnitudes 0, 1/192, 1/6, 1/4, 1/3,
// 1/2, 2/3, 1 have codes 0, 1, 6, 7, 4, 5, 2, 3.
constexpr uint8_t fp4_code_of_rank(int rank) {
  constexpr uint8_t kCodes[kFP4Ranks] = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};
  return kCodes[rank];
}

// A whole table as a std::array, e.g. table<float, kNF4Thresholds>(nf4_threshold), for a host
// namespace-scope constexpr copy. Host only.
template <typename T, size_t N>
constexpr std::array<T, N> table(T (*entry)(int)) {
  std::array<T, N> values{};
  for (size_t i = 0; i < N; ++i) values[i] = entry(static_cast<int>(i));
  return values;
}

}  // namespace qtrain::codebook

// The CPU blockwise kernels on hand-computed inputs (codes, nibble order, partial blocks, the
// tie rule at every threshold, edge cases) and on random data (round trips, every code
// reachable, the half-step error bound).
#include "core/error.h"
#include "quant/blockwise.h"
#include "quant/codebooks.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <vector>

namespace qtrain {
namespace {

// formats.md §1.2 (CUDA's float literals).
const std::vector<float> kNF4Thresholds = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f};
const std::vector<float> kFP4Thresholds = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                           0.4166667f,  0.583333f,  0.8333333f};
// The FP4 magnitude code of each magnitude rank (0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1).
const std::vector<int> kFP4MagnitudeCode = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};

at::Tensor floats(const std::vector<float>& v) {
  return at::tensor(at::ArrayRef<float>(v), at::kFloat);
}

std::vector<float> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kFloat).contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

std::vector<int> bytes_of(const at::Tensor& packed) {
  at::Tensor c = packed.contiguous();
  return {c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel()};
}

// Element i's code: high nibble of byte i/2 for even i, low nibble for odd i.
std::vector<int> unpack(const at::Tensor& packed, int64_t n) {
  const std::vector<int> bytes = bytes_of(packed);
  std::vector<int> codes(n);
  for (int64_t i = 0; i < n; ++i) codes[i] = i % 2 == 0 ? bytes[i / 2] >> 4 : bytes[i / 2] & 0xF;
  return codes;
}

TEST(Blockwise4bitTest, Nf4CodesAndNibbleOrder) {
  // absmax 1: 1 -> 15, -1 -> 0, 0 -> 7, 0.5 -> 12, 0.1 -> 8, and the odd pad 0 -> 7.
  auto [packed, absmax] =
      quantize_4bit(floats({1.0f, -1.0f, 0.0f, 0.5f, 0.1f}), QuantType::kNF4, 64);
  EXPECT_EQ(bytes_of(packed), (std::vector<int>{0xF0, 0x7C, 0x87}));
  EXPECT_EQ(to_vector(absmax), std::vector<float>{1.0f});
}

TEST(Blockwise4bitTest, PartialLastBlockUsesOnlyItsOwnElements) {
  // blocksize 4: block 0 = {2, -1, 0.5, 0} / 2 -> {1, -0.5, 0.25, 0} -> {15, 2, 10, 7};
  // block 1 = {-3, 1.5} / 3 -> {-1, 0.5} -> {0, 12}.
  auto [packed, absmax] =
      quantize_4bit(floats({2.0f, -1.0f, 0.5f, 0.0f, -3.0f, 1.5f}), QuantType::kNF4, 4);
  EXPECT_EQ(bytes_of(packed), (std::vector<int>{0xF2, 0xA7, 0x0C}));
  EXPECT_EQ(to_vector(absmax), (std::vector<float>{2.0f, 3.0f}));
  at::Tensor values = dequantize_4bit(packed, absmax, nf4_code(), 6, 4, at::kFloat);
  const std::vector<float> nf4 = to_vector(nf4_code());
  EXPECT_EQ(to_vector(values), (std::vector<float>{nf4[15] * 2, nf4[2] * 2, nf4[10] * 2, 0.0f,
                                                   nf4[0] * 3, nf4[12] * 3}));
}

TEST(Blockwise4bitTest, Nf4ValueOnAThresholdTakesTheLowerCode) {
  for (size_t k = 0; k < kNF4Thresholds.size(); ++k) {
    const float t = kNF4Thresholds[k];
    const float above = std::nextafter(t, 2.0f);
    // 1.0 fixes absmax at 1, so x * (1/absmax) == x exactly.
    auto [packed, absmax] = quantize_4bit(floats({t, above, 1.0f}), QuantType::kNF4, 64);
    const std::vector<int> codes = unpack(packed, 3);
    EXPECT_EQ(codes[0], static_cast<int>(k)) << "threshold " << k;
    EXPECT_EQ(codes[1], static_cast<int>(k) + 1) << "threshold " << k;
  }
}

TEST(Blockwise4bitTest, Nf4ThresholdsAreTheMidpointsOfTheTable) {
  const std::vector<float> nf4 = to_vector(nf4_code());
  for (size_t k = 0; k < kNF4Thresholds.size(); ++k) {
    EXPECT_NEAR(kNF4Thresholds[k], (static_cast<double>(nf4[k]) + nf4[k + 1]) / 2, 1e-7) << k;
  }
}

TEST(Blockwise4bitTest, Fp4SignAndMagnitudeThresholds) {
  for (size_t k = 0; k < kFP4Thresholds.size(); ++k) {
    const float t = kFP4Thresholds[k];
    const float above = std::nextafter(t, 2.0f);
    auto [packed, absmax] =
        quantize_4bit(floats({t, above, -t, -above, 1.0f}), QuantType::kFP4, 64);
    const std::vector<int> codes = unpack(packed, 5);
    EXPECT_EQ(codes[0], kFP4MagnitudeCode[k]) << k;
    EXPECT_EQ(codes[1], kFP4MagnitudeCode[k + 1]) << k;
    EXPECT_EQ(codes[2], 0b1000 | kFP4MagnitudeCode[k]) << k;
    EXPECT_EQ(codes[3], 0b1000 | kFP4MagnitudeCode[k + 1]) << k;
  }
}

TEST(Blockwise4bitTest, Fp4TinyNegativeIsNegativeZeroAndPositiveZeroIsZero) {
  // 1 -> 0b0011, -1e-4 -> 0b1000 (sign, magnitude 0), 1e-4 -> 0, -1 -> 0b1011, -0.0 -> 0.
  auto [packed, absmax] =
      quantize_4bit(floats({1.0f, -1e-4f, 1e-4f, -1.0f, -0.0f}), QuantType::kFP4, 64);
  EXPECT_EQ(unpack(packed, 5), (std::vector<int>{0b0011, 0b1000, 0b0000, 0b1011, 0b0000}));
  at::Tensor values = dequantize_4bit(packed, absmax, fp4_code(), 5, 64, at::kFloat);
  EXPECT_EQ(to_vector(values), (std::vector<float>{1.0f, 0.0f, 0.0f, -1.0f, 0.0f}));
}

// CUDA normalises an all-zero block by 0 * (1/0) = NaN, which every comparison rejects: NF4
// code 0 (bytes 0x00), FP4 code 0. Both dequantize to 0 since absmax is 0.
TEST(Blockwise4bitTest, AllZeroBlockFollowsCuda) {
  std::vector<float> x(64 + 3, 0.0f);
  x[64] = 0.5f;  // block 1 is non-zero; the pad of odd n codes 0 * 2 = 0
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    auto [packed, absmax] = quantize_4bit(floats(x), type, 64);
    const std::vector<int> bytes = bytes_of(packed);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(bytes[i], 0x00) << i;
    EXPECT_EQ(to_vector(absmax), (std::vector<float>{0.0f, 0.5f}));
    at::Tensor code = type == QuantType::kNF4 ? nf4_code() : fp4_code();
    at::Tensor values = dequantize_4bit(packed, absmax, code, x.size(), 64, at::kFloat);
    EXPECT_TRUE(at::equal(values.abs(), floats(x).abs()));
  }
  auto [packed, absmax] = quantize_4bit(floats({0.0f, 1.0f, 0.0f}), QuantType::kNF4, 64);
  EXPECT_EQ(bytes_of(packed), (std::vector<int>{0x7F, 0x77}));  // zeros in a live block: 7
}

TEST(Blockwise4bitTest, EveryCodeIsReachableAndMapsBackToItself) {
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    const at::Tensor code = type == QuantType::kNF4 ? nf4_code() : fp4_code();
    std::vector<float> x = to_vector(code);
    if (type == QuantType::kFP4) x[8] = -1e-6f;  // -0.0 is not < 0: reach "-0" from below
    auto [packed, absmax] = quantize_4bit(floats(x), type, 16);
    ASSERT_EQ(to_vector(absmax), std::vector<float>{1.0f});
    const std::vector<int> codes = unpack(packed, 16);
    for (int k = 0; k < 16; ++k) EXPECT_EQ(codes[k], k) << k;
  }
}

// Half the larger gap between code value v and its sorted neighbours: the worst |xn - v| for
// an xn that rounds to v.
float half_step(const std::vector<float>& sorted, float v) {
  const auto it = std::lower_bound(sorted.begin(), sorted.end(), v);
  const size_t i = it - sorted.begin();
  float gap = 0;
  if (i > 0) gap = std::max(gap, v - sorted[i - 1]);
  if (i + 1 < sorted.size()) gap = std::max(gap, sorted[i + 1] - v);
  return gap / 2;
}

TEST(Blockwise4bitTest, RandomRoundTripAndHalfStepBound) {
  at::manual_seed(1);
  const int64_t blocksize = 64;
  const int64_t n = 64 * 200 + 37;
  at::Tensor x = at::randn({n}) * at::rand({n}).mul(3);
  x.narrow(0, 64 * 5, 64).zero_();  // one all-zero block
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    SCOPED_TRACE(type == QuantType::kNF4 ? "nf4" : "fp4");
    const at::Tensor code = type == QuantType::kNF4 ? nf4_code() : fp4_code();
    auto [packed, absmax] = quantize_4bit(x, type, blocksize);
    at::Tensor y = dequantize_4bit(packed, absmax, code, n, blocksize, at::kFloat);

    // Requantizing the dequantized tensor gives the same codes and absmax, except that FP4's
    // "-0" (a tiny negative) dequantizes to 0, which requantizes to code 0.
    auto [packed2, absmax2] = quantize_4bit(y, type, blocksize);
    EXPECT_TRUE(at::equal(absmax, absmax2));
    std::vector<int> first = unpack(packed, n);
    const std::vector<int> second = unpack(packed2, n);
    if (type == QuantType::kFP4) std::replace(first.begin(), first.end(), 0b1000, 0);
    EXPECT_EQ(first, second);

    std::vector<float> sorted = to_vector(code);
    std::sort(sorted.begin(), sorted.end());
    const std::vector<float> xs = to_vector(x), ys = to_vector(y), am = to_vector(absmax);
    const std::vector<int> codes = unpack(packed, n);
    std::set<int> seen(codes.begin(), codes.end());
    EXPECT_EQ(seen.size(), 16u);
    const std::vector<float> values = to_vector(code);
    for (int64_t i = 0; i < n; ++i) {
      const float a = am[i / blocksize];
      const float bound = half_step(sorted, values[codes[i]]) * a * (1 + 1e-6f) + 1e-30f;
      ASSERT_LE(std::fabs(xs[i] - ys[i]), bound) << "element " << i;
    }
  }
}

TEST(Blockwise4bitTest, DequantizeRoundsOnceToTheOutputDtype) {
  at::manual_seed(2);
  at::Tensor x = at::randn({1000});
  auto [packed, absmax] = quantize_4bit(x.to(at::kBFloat16), QuantType::kNF4, 64);
  at::Tensor f32 = dequantize_4bit(packed, absmax, nf4_code(), 1000, 64, at::kFloat);
  for (at::ScalarType t : {at::kBFloat16, at::kHalf, at::kDouble}) {
    at::Tensor out = dequantize_4bit(packed, absmax, nf4_code(), 1000, 64, t);
    EXPECT_EQ(out.scalar_type(), t);
    EXPECT_TRUE(at::equal(out, f32.to(t)));
  }
}

TEST(Blockwise8bitTest, MidpointsGoToTheLowerCodeAndCodesMapToThemselves) {
  const std::vector<float> d = to_vector(dynamic_code_signed());
  std::vector<float> x;
  for (int k = 0; k < 255; ++k) {
    const float mid = (d[k] + d[k + 1]) * 0.5f;
    x.push_back(mid);
    x.push_back(std::nextafter(mid, 2.0f));
  }
  x.insert(x.end(), d.begin(), d.end());  // includes 1.0: absmax 1
  auto [codes, absmax] = quantize_blockwise_8bit(floats(x), dynamic_code_signed(), 4096);
  EXPECT_EQ(to_vector(absmax), std::vector<float>{1.0f});
  const std::vector<int> q = bytes_of(codes);
  for (int k = 0; k < 255; ++k) {
    EXPECT_EQ(q[2 * k], k) << "midpoint " << k;
    EXPECT_EQ(q[2 * k + 1], k + 1) << "above midpoint " << k;
  }
  for (int k = 0; k < 256; ++k) EXPECT_EQ(q[510 + k], k) << "code " << k;
}

TEST(Blockwise8bitTest, NearestValueOnRandomDataAndDequantize) {
  at::manual_seed(3);
  const int64_t n = 256 * 10 + 7;
  at::Tensor x = at::randn({n}).pow(3);
  const std::vector<float> d = to_vector(dynamic_code_signed());
  auto [codes, absmax] = quantize_blockwise_8bit(x, dynamic_code_signed(), 256);
  ASSERT_EQ(absmax.numel(), 11);
  const std::vector<float> xs = to_vector(x), am = to_vector(absmax);
  const std::vector<int> q = bytes_of(codes);
  for (int64_t i = 0; i < n; ++i) {
    const float xn = xs[i] * (1.0f / am[i / 256]);
    const float err = std::fabs(xn - d[q[i]]);
    for (int k = 0; k < 256; ++k) ASSERT_LE(err, std::fabs(xn - d[k]) + 1e-7f) << i;
  }
  at::Tensor y = dequantize_blockwise_8bit(codes, absmax, dynamic_code_signed(), 256, at::kFloat);
  const std::vector<float> ys = to_vector(y);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(ys[i], d[q[i]] * am[i / 256]) << i;
}

TEST(BlockwiseInt8Test, RoundsHalfAwayFromZero) {
  // absmax 127: the multiplier 127/absmax is exactly 1.
  auto [q, absmax] = quantize_int8(floats({127.0f, 63.5f, -63.5f, 0.5f, -0.5f, 0.4f, -126.6f}), 64);
  at::Tensor c = q.contiguous();
  EXPECT_EQ(std::vector<int>(c.data_ptr<int8_t>(), c.data_ptr<int8_t>() + 7),
            (std::vector<int>{127, 64, -64, 1, -1, 0, -127}));
  at::Tensor y = dequantize_int8(q, absmax, 64, at::kFloat);
  EXPECT_EQ(to_vector(y), (std::vector<float>{127, 64, -64, 1, -1, 0, -127}));
}

TEST(BlockwiseInt8Test, AllZeroBlockGivesZerosAndErrorIsBounded) {
  at::manual_seed(4);
  at::Tensor x = at::randn({64 * 9 + 5});
  x.narrow(0, 64, 64).zero_();
  auto [q, absmax] = quantize_int8(x, 64);
  EXPECT_EQ(absmax[1].item<float>(), 0.0f);
  EXPECT_TRUE(q.narrow(0, 64, 64).eq(0).all().item<bool>());
  at::Tensor y = dequantize_int8(q, absmax, 64, at::kFloat);
  at::Tensor am = at::repeat_interleave(absmax, 64).narrow(0, 0, x.numel());
  EXPECT_TRUE((x - y).abs().le(am / 254 * (1 + 1e-5)).all().item<bool>());
}

TEST(BlockwiseTest, EmptyInput) {
  auto [packed, absmax] = quantize_4bit(at::empty({0}), QuantType::kNF4, 64);
  EXPECT_EQ(packed.numel(), 0);
  EXPECT_EQ(absmax.numel(), 0);
  EXPECT_EQ(dequantize_4bit(packed, absmax, nf4_code(), 0, 64, at::kBFloat16).numel(), 0);
}

TEST(BlockwiseTest, BadArgumentsAreErrors) {
  auto kind_of = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return e.kind();
    }
    return ErrorKind::kInternal;
  };
  at::Tensor x = at::randn({10});
  EXPECT_EQ(kind_of([&] { quantize_4bit(x, QuantType::kNF4, 0); }), ErrorKind::kConfig);
  EXPECT_EQ(kind_of([&] { quantize_4bit(x, QuantType::kNF4, 63); }), ErrorKind::kConfig);
  EXPECT_EQ(kind_of([&] { quantize_4bit(x, QuantType::kInt8, 64); }), ErrorKind::kUnsupported);
  EXPECT_EQ(kind_of([&] { quantize_int8(x.to(at::kInt), 64); }), ErrorKind::kUnsupported);
  EXPECT_EQ(kind_of([&] { quantize_int8(at::empty({4}, at::Device("meta")), 64); }),
            ErrorKind::kUnsupported);
  const auto quantized = quantize_4bit(x, QuantType::kNF4, 64);
  const at::Tensor packed = quantized.first, absmax = quantized.second;  // lambdas capture these
  EXPECT_EQ(kind_of([&] { dequantize_4bit(packed, absmax, nf4_code(), 12, 64, at::kFloat); }),
            ErrorKind::kShape);
  EXPECT_EQ(kind_of([&] {
              dequantize_4bit(packed, absmax, nf4_code().narrow(0, 0, 8), 10, 64, at::kFloat);
            }),
            ErrorKind::kShape);
  EXPECT_EQ(kind_of([&] { dequantize_4bit(packed, absmax, nf4_code(), 10, 64, at::kInt); }),
            ErrorKind::kUnsupported);
  EXPECT_EQ(kind_of([&] { quantize_blockwise_8bit(x, nf4_code(), 64); }), ErrorKind::kShape);
}

}  // namespace
}  // namespace qtrain

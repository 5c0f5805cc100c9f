// The vectorized quantizers (AVX2, AVX-512: NF4, FP4, INT8) write the same bits as the scalar
// reference (itself checked against bitsandbytes' CUDA rules in test_blockwise_cpu). Every path
// this CPU has is forced in turn and compared byte for byte, packed codes and absmax, for float32,
// bfloat16 and float16 inputs: normal weights at several scales, every float bit pattern class
// (random 32- and 16-bit patterns: NaN payloads, infinities, subnormals, -0), the code thresholds
// themselves and their neighbours, INT8's exact halves, all-zero and all-NaN blocks, blocksizes
// that the kernels take and those they leave to the scalar loop, odd and partial tails, and
// unaligned input.
#include "quant/blockwise.h"
#include "quant/blockwise_cpu.h"
#include "quant/codebook_tables.h"
#include "tests/quant/simd_paths.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace qtrain {
namespace {

using cpu::SimdPath;
using testing::floats;
using testing::ForcedPath;
using testing::from_bits;
using testing::raw_bytes;
using testing::vector_paths;

struct Quantized {
  std::vector<uint8_t> values;
  std::vector<uint8_t> absmax;
};

enum class Kind { kNF4, kFP4, kInt8 };
const char* name(Kind k) {
  return k == Kind::kNF4 ? "nf4" : k == Kind::kFP4 ? "fp4" : "int8";
}

Quantized quantize_on(SimdPath path, Kind kind, const at::Tensor& x, int64_t blocksize) {
  ForcedPath forced(path);
  if (kind == Kind::kInt8) {
    auto [q, absmax] = quantize_int8(x, blocksize);
    return {raw_bytes(q), raw_bytes(absmax)};
  }
  auto [packed, absmax] =
      quantize_4bit(x, kind == Kind::kNF4 ? QuantType::kNF4 : QuantType::kFP4, blocksize);
  return {raw_bytes(packed), raw_bytes(absmax)};
}

// x float32 [n] in each input type (and its raw self for the bit-pattern inputs), through every
// vector path, against the scalar reference.
void expect_paths_agree(const at::Tensor& x, int64_t blocksize, const std::string& what,
                        int* compared = nullptr) {
  for (Kind kind : {Kind::kNF4, Kind::kFP4, Kind::kInt8}) {
    if (kind != Kind::kInt8 && blocksize % 2 != 0) continue;
    const Quantized reference = quantize_on(SimdPath::kScalar, kind, x, blocksize);
    for (SimdPath path : vector_paths()) {
      const Quantized got = quantize_on(path, kind, x, blocksize);
      const std::string where = what + " " + name(kind) + " " + c10::toString(x.scalar_type()) +
                                " blocksize " + std::to_string(blocksize) + " on " +
                                cpu::simd_path_name(path);
      EXPECT_EQ(got.absmax, reference.absmax) << where;
      ASSERT_EQ(got.values.size(), reference.values.size()) << where;
      for (size_t i = 0; i < got.values.size(); ++i) {
        ASSERT_EQ(got.values[i], reference.values[i]) << where << ": byte " << i;
      }
      if (compared) ++*compared;
    }
  }
}

void expect_all_types_agree(const at::Tensor& x32, int64_t blocksize, const std::string& what) {
  for (at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
    expect_paths_agree(x32.to(t), blocksize, what);
  }
}

TEST(QuantizeSimd, AutoIsTheWidestAndScalarIsAlwaysThere) {
  EXPECT_TRUE(cpu::simd_path_supported(SimdPath::kScalar));
  const SimdPath widest = cpu::simd_path();
  EXPECT_NE(widest, SimdPath::kAuto);
  if (cpu::simd_path_supported(SimdPath::kAvx512)) {
    EXPECT_EQ(widest, SimdPath::kAvx512);
  }
  if (vector_paths().empty()) GTEST_SKIP() << "no AVX2 on this CPU: only the scalar path runs";
}

TEST(QuantizeSimd, NormalWeightsAtManyScalesAndBlocksizes) {
  if (vector_paths().empty()) GTEST_SKIP() << "no AVX2 on this CPU";
  at::manual_seed(3);
  for (int64_t blocksize : {32, 64, 128, 256, 4096}) {
    for (double scale : {1e-30, 0.02, 1.0, 3e4}) {
      // Four full blocks, then a partial one of odd length (scalar tail, 0-coded pad nibble).
      const int64_t n = 4 * blocksize + 37;
      expect_all_types_agree(at::randn({n}) * scale, blocksize, "randn*" + std::to_string(scale));
    }
  }
}

TEST(QuantizeSimd, BlocksizesTheKernelsLeaveToTheScalarLoopStillAgree) {
  if (vector_paths().empty()) GTEST_SKIP() << "no AVX2 on this CPU";
  at::manual_seed(4);
  for (int64_t blocksize : {2, 16, 34, 48, 96}) {
    expect_all_types_agree(at::randn({5 * blocksize + 3}), blocksize, "randn");
  }
}

TEST(QuantizeSimd, EveryFloatBitPatternClass) {
  if (vector_paths().empty()) GTEST_SKIP() << "no AVX2 on this CPU";
  std::mt19937 rng(11);
  std::vector<float> patterns(64 * 257);
  for (float& f : patterns) f = from_bits(static_cast<uint32_t>(rng()));
  expect_paths_agree(floats(patterns), 64, "random float32 bits");
  // 16-bit patterns as bf16 and fp16 inputs, unconverted.
  at::Tensor bits16 = at::empty({64 * 257}, at::kShort);
  for (int64_t i = 0; i < bits16.numel(); ++i) {
    bits16.data_ptr<int16_t>()[i] = static_cast<int16_t>(rng());
  }
  expect_paths_agree(bits16.view(at::kBFloat16), 64, "random bf16 bits");
  expect_paths_agree(bits16.view(at::kHalf), 64, "random fp16 bits");
  // Small exponents only (subnormals and tiny normals, both signs, all mantissas).
  std::vector<float> tiny(64 * 64);
  for (float& f : tiny) f = from_bits(static_cast<uint32_t>(rng()) & 0x80FFFFFFu);
  expect_all_types_agree(floats(tiny), 64, "subnormal and tiny");
}

TEST(QuantizeSimd, SpecialBlocks) {
  if (vector_paths().empty()) GTEST_SKIP() << "no AVX2 on this CPU";
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x;
  const auto block = [&](auto value_of) {
    for (int i = 0; i < 64; ++i) x.push_back(value_of(i));
  };
  block([](int) { return 0.0f; });                                 // all zero: 0 * inf = NaN codes
  block([](int i) { return i % 2 ? -0.0f : 0.0f; });               // signed zeros
  block([&](int) { return nan; });                                 // all NaN: absmax -FLT_MAX
  block([&](int i) { return i % 3 ? nan : 0.5f * i; });            // NaNs skipped by absmax
  block([&](int i) { return i == 17 ? inf : 0.25f * (i - 32); });  // +inf absmax
  block([&](int i) { return i == 5 ? -inf : -1.0f * i; });         // -inf
  block([&](int i) { return i == 63 ? 1e-3f : 0.0f; });            // one value
  block([&](int i) { return from_bits(0x7FC00000u | static_cast<uint32_t>(i)); });  // payloads
  block([&](int i) { return i == 0 ? std::numeric_limits<float>::max() : -1e38f; });
  expect_paths_agree(floats(x), 64, "special blocks");
  expect_paths_agree(floats(x).to(at::kHalf), 64, "special blocks");
  expect_paths_agree(floats(x).to(at::kBFloat16), 64, "special blocks");
}

TEST(QuantizeSimd, ThresholdsAndTheirNeighbours) {
  if (vector_paths().empty()) GTEST_SKIP() << "no AVX2 on this CPU";
  // absmax 1 (the block's first element), so xn = x exactly: each threshold, the floats on either
  // side, and their negatives.
  std::vector<float> x;
  const auto add_around = [&](float t) {
    for (float v : {t, std::nextafter(t, 2.0f), std::nextafter(t, -2.0f)}) {
      x.push_back(v);
      x.push_back(-v);
    }
  };
  for (int k = 0; k < codebook::kNF4Thresholds; ++k) add_around(codebook::nf4_threshold(k));
  for (int k = 0; k < codebook::kFP4Thresholds; ++k) add_around(codebook::fp4_threshold(k));
  std::vector<float> blocks;
  for (size_t i = 0; i < x.size(); i += 63) {
    blocks.push_back(1.0f);
    for (size_t j = i; j < i + 63; ++j) blocks.push_back(j < x.size() ? x[j] : 0.0f);
  }
  int compared = 0;
  expect_paths_agree(floats(blocks), 64, "thresholds", &compared);
  EXPECT_GT(compared, 0);
}

TEST(QuantizeSimd, Int8ExactHalvesRoundAwayFromZero) {
  // absmax 127 makes the multiplier exactly 1: q = round-half-away(x), checked against the values
  // themselves on every path (not only against the scalar loop).
  std::vector<float> x(64, 0.0f);
  const std::vector<float> in = {127.0f, 0.5f,   -0.5f,       1.5f,         -1.5f,  2.5f,   -2.5f,
                                 63.5f,  -63.5f, 0.49999997f, -0.49999997f, 126.5f, -126.5f};
  const std::vector<int8_t> expected = {127, 1, -1, 2, -2, 3, -3, 64, -64, 0, 0, 127, -127};
  std::copy(in.begin(), in.end(), x.begin());
  std::vector<SimdPath> paths = vector_paths();
  paths.push_back(SimdPath::kScalar);
  for (SimdPath path : paths) {
    ForcedPath forced(path);
    auto [q, absmax] = quantize_int8(floats(x), 64);
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(q.data_ptr<int8_t>()[i], expected[i])
          << cpu::simd_path_name(path) << ": x = " << in[i];
    }
  }
}

TEST(QuantizeSimd, UnalignedInputAndManyThreads) {
  if (vector_paths().empty()) GTEST_SKIP() << "no AVX2 on this CPU";
  at::manual_seed(5);
  // A slice one element in: contiguous but off every vector alignment; 300 blocks spread over the
  // parallel tasks.
  const at::Tensor base = at::randn({64 * 300 + 1});
  for (at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor typed = base.to(t);
    expect_paths_agree(typed.narrow(0, 1, 64 * 300), 64, "unaligned");
  }
}

}  // namespace
}  // namespace qtrain

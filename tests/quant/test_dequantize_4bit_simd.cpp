// The vectorized 4-bit dequantize (AVX2, AVX-512) writes the same bits as the scalar reference,
// which itself equals a straightforward element-by-element formula (code[q] * absmax in float32,
// one c10 conversion). Every path this CPU has is forced in turn; each input is compared as raw
// bytes for float32, bfloat16 and float16 outputs: all 256 byte values, adversarial absmax
// (zero, subnormal, huge, NaN with payloads, infinities), a sweep of float bit patterns through
// the conversions, odd element counts, partial and tiny blocks, and sub-ranges starting at a block
// (unaligned input and output pointers).
#include "quant/blockwise.h"
#include "quant/blockwise_cpu.h"
#include "quant/codebooks.h"
#include "tests/quant/simd_paths.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <iostream>
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

const std::vector<at::ScalarType> kOutputTypes = {at::kFloat, at::kBFloat16, at::kHalf};

at::Tensor dequantize_on(SimdPath path, const at::Tensor& packed, const at::Tensor& absmax,
                         const at::Tensor& code, int64_t n, int64_t blocksize,
                         at::ScalarType dtype) {
  ForcedPath forced(path);
  return dequantize_4bit(packed, absmax, code, n, blocksize, dtype);
}

// The element formula, written out: element i is nibble i of the bytes (high first), its value
// code[q] * absmax[i / blocksize] in float32, converted once by c10.
at::Tensor formula(const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& code,
                   int64_t n, int64_t blocksize, at::ScalarType dtype) {
  const at::Tensor bytes = packed.contiguous(), scales = absmax.contiguous(), c = code.contiguous();
  at::Tensor out = at::empty({n}, dtype);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = bytes.data_ptr<uint8_t>()[i / 2];
    const int q = i % 2 == 0 ? byte >> 4 : byte & 0xF;
    const float v = c.data_ptr<float>()[q] * scales.data_ptr<float>()[i / blocksize];
    if (dtype == at::kFloat) out.data_ptr<float>()[i] = v;
    if (dtype == at::kBFloat16) out.data_ptr<c10::BFloat16>()[i] = c10::BFloat16(v);
    if (dtype == at::kHalf) out.data_ptr<c10::Half>()[i] = c10::Half(v);
  }
  return out;
}

// Every path (scalar included) against the formula, and each vectorized path against the scalar
// one, byte for byte.
void expect_all_paths_equal(const at::Tensor& packed, const at::Tensor& absmax,
                            const at::Tensor& code, int64_t n, int64_t blocksize,
                            const std::string& what) {
  for (at::ScalarType dtype : kOutputTypes) {
    const at::Tensor scalar =
        dequantize_on(SimdPath::kScalar, packed, absmax, code, n, blocksize, dtype);
    ASSERT_EQ(scalar.numel(), n);
    EXPECT_EQ(raw_bytes(scalar), raw_bytes(formula(packed, absmax, code, n, blocksize, dtype)))
        << what << " " << dtype << ": scalar vs formula";
    for (SimdPath path : vector_paths()) {
      const at::Tensor vec = dequantize_on(path, packed, absmax, code, n, blocksize, dtype);
      const std::vector<uint8_t> want = raw_bytes(scalar), got = raw_bytes(vec);
      ASSERT_EQ(got.size(), want.size());
      size_t first_diff = 0;
      while (first_diff < got.size() && got[first_diff] == want[first_diff]) ++first_diff;
      EXPECT_EQ(first_diff, got.size())
          << what << " " << dtype << " " << cpu::simd_path_name(path)
          << ": first differing element " << first_diff / scalar.element_size() << " of " << n;
    }
  }
}

at::Tensor random_bytes(int64_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  at::Tensor t = at::empty({count}, at::kByte);
  for (int64_t i = 0; i < count; ++i) t.data_ptr<uint8_t>()[i] = static_cast<uint8_t>(rng());
  return t;
}

at::Tensor random_absmax(int64_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(0.0f, 0.1f);
  at::Tensor t = at::empty({count}, at::kFloat);
  for (int64_t i = 0; i < count; ++i) t.data_ptr<float>()[i] = dist(rng);
  return t;
}

TEST(Dequantize4bitSimdTest, PathSelection) {
  EXPECT_TRUE(cpu::simd_path_supported(SimdPath::kScalar));
  EXPECT_NE(cpu::simd_path(), SimdPath::kAuto);
  for (SimdPath p : vector_paths()) {
    ForcedPath forced(p);
    EXPECT_EQ(cpu::simd_path(), p);
  }
  {
    ForcedPath forced(SimdPath::kScalar);
    EXPECT_EQ(cpu::simd_path(), SimdPath::kScalar);
  }
  // kAuto picks the widest path the CPU has.
  const std::vector<SimdPath> vec = vector_paths();
  EXPECT_EQ(cpu::simd_path(), vec.empty() ? SimdPath::kScalar : vec.back());
  std::cout << "dequantize_4bit path: " << cpu::simd_path_name(cpu::simd_path()) << "\n";
}

TEST(Dequantize4bitSimdTest, EveryByteValueEveryBlocksize) {
  at::Tensor packed = at::empty({512}, at::kByte);
  for (int i = 0; i < 512; ++i) packed.data_ptr<uint8_t>()[i] = static_cast<uint8_t>(i * 37 % 256);
  for (const at::Tensor& code : {nf4_code(), fp4_code()}) {
    for (int64_t bs : {2, 6, 32, 34, 64, 96, 128, 1024}) {
      for (int64_t n : {int64_t{1024}, int64_t{1023}, int64_t{1001}, int64_t{31}, int64_t{1}}) {
        const int64_t blocks = (n + bs - 1) / bs;
        expect_all_paths_equal(packed.narrow(0, 0, (n + 1) / 2), random_absmax(blocks, bs + n),
                               code, n, bs, "bs " + std::to_string(bs) + " n " + std::to_string(n));
      }
    }
  }
}

TEST(Dequantize4bitSimdTest, AdversarialAbsmax) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> special = {0.0f,
                                      -0.0f,
                                      from_bits(0x00000001),  // smallest subnormal
                                      1e-40f,
                                      std::numeric_limits<float>::min(),
                                      6e-8f,    // float16 subnormal range
                                      6.1e-5f,  // near float16's smallest normal
                                      1.0f,
                                      65504.0f,  // float16 max
                                      65520.0f,  // rounds to float16 inf
                                      1e30f,
                                      std::numeric_limits<float>::max(),
                                      inf,
                                      -inf,
                                      std::numeric_limits<float>::quiet_NaN(),
                                      from_bits(0x7FE12345),  // NaN with payload
                                      from_bits(0xFFC00001),  // negative NaN with payload
                                      from_bits(0x7F800001),  // signalling NaN
                                      from_bits(0x3F808000),  // bfloat16 tie, even below
                                      from_bits(0x3F818000),  // bfloat16 tie, odd below
                                      -3.5f};
  const int64_t bs = 64, n = bs * static_cast<int64_t>(special.size());
  for (const at::Tensor& code : {nf4_code(), fp4_code()}) {
    expect_all_paths_equal(random_bytes(n / 2, 7), floats(special), code, n, bs, "special");
  }
}

// absmax sweeps float bit patterns (every upper half-word with low half-words at and around the
// bfloat16 and float16 rounding points) through codes +-1, 0 and a few others, so the products
// themselves are those patterns: the conversions see normals, subnormals, ties, overflow, NaN.
TEST(Dequantize4bitSimdTest, FloatPatternSweepThroughTheConversions) {
  const std::vector<uint32_t> low = {0x0000, 0x0001, 0x0FFF, 0x1000, 0x1001, 0x2000, 0x3000,
                                     0x7FFF, 0x8000, 0x8001, 0xE000, 0xF000, 0xFFFF};
  std::vector<float> absmax;
  for (uint32_t high = 0; high < 0x10000; ++high) {
    for (uint32_t l : low) absmax.push_back(from_bits(high << 16 | l));
  }
  const int64_t bs = 2, n = bs * static_cast<int64_t>(absmax.size());
  // Code 15 (1.0) and 0 (-1.0) of NF4, then all bytes in turn.
  at::Tensor packed = at::empty({n / 2}, at::kByte);
  for (int64_t i = 0; i < n / 2; ++i) {
    packed.data_ptr<uint8_t>()[i] = i % 4 == 0 ? 0xF0 : static_cast<uint8_t>(i * 13);
  }
  expect_all_paths_equal(packed, floats(absmax), nf4_code(), n, bs, "sweep");
  // A code table of raw patterns at absmax 1: the products are the table itself.
  std::mt19937 rng(3);
  std::vector<float> table(16);
  for (int round = 0; round < 64; ++round) {
    for (float& v : table) v = from_bits(static_cast<uint32_t>(rng()));
    table[0] = from_bits(0x477FF000);  // 65520: float16 tie to infinity
    table[1] = from_bits(0x33000000);  // 2^-25: float16 tie to zero
    expect_all_paths_equal(random_bytes(256, round), floats(std::vector<float>(8, 1.0f)),
                           floats(table), 512, 64, "table round " + std::to_string(round));
  }
}

// dequantize_rows narrows the packed bytes to the blocks covering a row range: the first element
// is a block start, the byte pointer is any multiple of blocksize / 2 (unaligned for bs 34), the
// count may stop inside a block.
TEST(Dequantize4bitSimdTest, SubRangesFromABlockStart) {
  const int64_t n = 34 * 40 + 17;
  const at::Tensor packed = random_bytes((n + 1) / 2, 11);
  for (int64_t bs : {34, 64}) {
    const at::Tensor absmax = random_absmax((n + bs - 1) / bs, 5);
    for (int64_t first_block : {0, 1, 3, 7}) {
      const int64_t begin = first_block * bs;
      for (int64_t count : {int64_t{1}, bs - 1, bs + 3, n - begin}) {
        if (begin + count > n) continue;
        const int64_t blocks = (count + bs - 1) / bs;
        expect_all_paths_equal(packed.narrow(0, begin / 2, (count + 1) / 2),
                               absmax.narrow(0, first_block, blocks), nf4_code(), count, bs,
                               "from block " + std::to_string(first_block) + " count " +
                                   std::to_string(count) + " bs " + std::to_string(bs));
      }
    }
  }
}

TEST(Dequantize4bitSimdTest, EmptyAndQuantizedRoundTrip) {
  for (at::ScalarType dtype : kOutputTypes) {
    for (SimdPath path : vector_paths()) {
      EXPECT_EQ(dequantize_on(path, at::empty({0}, at::kByte), at::empty({0}, at::kFloat),
                              nf4_code(), 0, 64, dtype)
                    .numel(),
                0);
    }
  }
  // A real weight: quantize then dequantize on each path.
  at::manual_seed(0);
  const at::Tensor w = at::randn({37, 91}) * 0.02;
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    auto [packed, absmax] = quantize_4bit(w, type, 64);
    expect_all_paths_equal(packed, absmax, type == QuantType::kNF4 ? nf4_code() : fp4_code(),
                           w.numel(), 64, "weight");
  }
}

// Outputs of 4 MiB and more get transparent huge page advice before the kernel writes them.
TEST(Dequantize4bitSimdTest, LargeOutputsAndAReusedOutput) {
  const int64_t n = (int64_t{1} << 21) + 6, bs = 64;
  const at::Tensor packed = random_bytes((n + 1) / 2, 21);
  const at::Tensor absmax = random_absmax((n + bs - 1) / bs, 22);
  expect_all_paths_equal(packed, absmax, nf4_code(), n, bs, "large");
  for (at::ScalarType dtype : kOutputTypes) {
    at::Tensor out = at::full({n}, 7.0, dtype);
    cpu::dequantize_4bit_into(packed, absmax, nf4_code(), n, bs, out);
    EXPECT_EQ(raw_bytes(out), raw_bytes(dequantize_4bit(packed, absmax, nf4_code(), n, bs, dtype)))
        << dtype;
  }
}

}  // namespace
}  // namespace qtrain

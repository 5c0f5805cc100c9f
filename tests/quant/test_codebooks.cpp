// The code tables against bitsandbytes' float32 values (reference/formats.md §1.1, §1.3). The
// dynamic maps are pinned bit for bit to torch's output on x86 (AVX2/AVX-512), which is what
// bitsandbytes stores in checkpoints.
#include "quant/codebooks.h"

#include "quant/codebook_tables.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace qtrain {
namespace {

std::vector<float> values(const at::Tensor& t) {
  EXPECT_EQ(t.scalar_type(), at::kFloat);
  at::Tensor c = t.contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

TEST(CodebooksTest, Nf4IsBitsandbytesTable) {
  const std::vector<float> expected = {-1.0f,
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
                                       1.0f};
  EXPECT_EQ(values(nf4_code()), expected);
}

TEST(CodebooksTest, Fp4IsCodeOrderTableOverTwelveAndMatchesTheCudaLut) {
  const std::vector<float> raw = {0, 0.0625,  8,  12,  4,  6,  2,  3,
                                  0, -0.0625, -8, -12, -4, -6, -2, -3};
  const std::vector<float> code = values(fp4_code());
  ASSERT_EQ(code.size(), 16u);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(code[i], raw[i] / 12.0f) << i;
    // bitsandbytes' "-0" for code 8 is the Python int -0: +0.0 in the stored quant_map.
    EXPECT_EQ(std::signbit(code[i]), i > 8) << i;
  }
  // csrc/kernels.cu fp4_dequantization_lut, indexed by the 3 magnitude bits.
  const std::vector<float> lut = {0.0f, 0.005208333333f, 0.66666667f, 1.0f, 0.33333333f,
                                  0.5f, 0.16666667f,     0.25f};
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(code[i], lut[i]) << i;
    EXPECT_EQ(code[i + 8], -lut[i]) << i;
  }
}

TEST(CodebooksTest, SharedNf4TablesMatchTheCodeTensor) {
  const std::vector<float> code = values(nf4_code());
  ASSERT_EQ(code.size(), static_cast<size_t>(codebook::kNF4Values));
  for (int i = 0; i < codebook::kNF4Values; ++i) EXPECT_EQ(codebook::nf4_value(i), code[i]) << i;
  // Each decision threshold is the midpoint of two adjacent (sorted) NF4 values.
  for (int k = 0; k < codebook::kNF4Thresholds; ++k) {
    const double midpoint = (static_cast<double>(code[k]) + code[k + 1]) / 2;
    EXPECT_NEAR(codebook::nf4_threshold(k), midpoint, 1e-7) << k;
  }
}

TEST(CodebooksTest, SharedFp4TablesMatchTheCodeTensor) {
  const std::vector<float> code = values(fp4_code());
  ASSERT_EQ(code.size(), static_cast<size_t>(codebook::kFP4Values));
  for (int i = 0; i < codebook::kFP4Values; ++i) {
    EXPECT_EQ(codebook::fp4_raw_value(i) / 12.0f, code[i]) << i;
  }
  // The magnitude ranks: code_of_rank(r) holds the r-th smallest magnitude, sign bit clear.
  std::vector<float> magnitudes(code.begin(), code.begin() + codebook::kFP4Ranks);
  std::sort(magnitudes.begin(), magnitudes.end());
  for (int r = 0; r < codebook::kFP4Ranks; ++r) {
    const int c = codebook::fp4_code_of_rank(r);
    ASSERT_LT(c, 8) << r;
    EXPECT_EQ(code[c], magnitudes[r]) << r;
  }
  // Each threshold lies between adjacent magnitudes, at their midpoint to bitsandbytes' rounding
  // of the decimal literals (0.583333f is the farthest off).
  for (int k = 0; k < codebook::kFP4Thresholds; ++k) {
    EXPECT_LT(magnitudes[k], codebook::fp4_threshold(k)) << k;
    EXPECT_LT(codebook::fp4_threshold(k), magnitudes[k + 1]) << k;
    const double midpoint = (static_cast<double>(magnitudes[k]) + magnitudes[k + 1]) / 2;
    EXPECT_NEAR(codebook::fp4_threshold(k), midpoint, 1e-6) << k;
  }
}

TEST(CodebooksTest, SignedDynamicMapMatchesBitsandbytes) {
  const std::vector<float> d = values(dynamic_code_signed());
  ASSERT_EQ(d.size(), 256u);
  EXPECT_EQ(d[0], -0x1.fc6666p-1f);  // -0.99296875 (rounded to float32)
  EXPECT_EQ(d[18], -0x1.7accccp-1f);
  EXPECT_EQ(d[20], -0x1.6c6668p-1f);
  EXPECT_EQ(d[126], -0x1.27476ep-21f);
  EXPECT_EQ(d[127], 0.0f);
  EXPECT_EQ(d[128], 0x1.27476ep-21f);  // 5.5e-7
  EXPECT_EQ(d[129], 0x1.b43528p-19f);  // 3.25e-6
  EXPECT_EQ(d[200], 0x1.de6666p-3f);
  EXPECT_EQ(d[254], 0x1.fc6666p-1f);  // 0.99296875
  EXPECT_EQ(d[255], 1.0f);
  double abs_sum = 0;
  for (int i = 0; i < 256; ++i) {
    abs_sum += std::fabs(static_cast<double>(d[i]));
    if (i > 0) {
      EXPECT_LT(d[i - 1], d[i]) << i;
    }
    if (i < 127) {
      EXPECT_EQ(d[i], -d[254 - i]) << i;
    }
  }
  EXPECT_EQ(abs_sum, 75.10526317200026);  // sum of |d| from torch, in index order
}

TEST(CodebooksTest, UnsignedDynamicMapMatchesBitsandbytes) {
  const std::vector<float> u = values(dynamic_code_unsigned());
  ASSERT_EQ(u.size(), 256u);
  EXPECT_EQ(u[0], 0.0f);
  EXPECT_EQ(u[1], 0x1.5cf754p-22f);  // 3.25e-7
  EXPECT_EQ(u[2], 0x1.a01330p-21f);  // 7.75e-7
  EXPECT_EQ(u[85], 0x1.551eb8p-5f);
  EXPECT_EQ(u[186], 0x1.096666p-1f);
  EXPECT_EQ(u[254], 0x1.fe3334p-1f);  // 0.99648438
  EXPECT_EQ(u[255], 1.0f);
  double sum = 0;
  for (int i = 0; i < 256; ++i) {
    sum += u[i];
    if (i > 0) {
      EXPECT_LT(u[i - 1], u[i]) << i;
    }
  }
  EXPECT_EQ(sum, 75.1052632433869);
}

TEST(CodebooksTest, TablesAreFreshCopies) {
  at::Tensor a = dynamic_code_signed();
  a.zero_();
  EXPECT_EQ(dynamic_code_signed()[255].item<float>(), 1.0f);
}

}  // namespace
}  // namespace qtrain

// QuantizedTensor: config validation, bitsandbytes layout, exact byte counts (against
// quant/memory.h), double quantization (bits saved, error bound) and the round trip.
#include "core/error.h"
#include "quant/codebooks.h"
#include "quant/memory.h"
#include "quant/quantized_tensor.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <vector>

namespace qtrain {
namespace {

Error error_of(const QuantConfig& config) {
  try {
    config.validate();
  } catch (const Error& e) {
    return e;
  }
  return Error(ErrorKind::kInternal, "no error");
}

TEST(QuantConfigTest, ValidBlocksizesAndCombinations) {
  for (int64_t bs = 32; bs <= 4096; bs *= 2) {
    EXPECT_NO_THROW((QuantConfig{QuantType::kNF4, bs, true}.validate()));
    EXPECT_NO_THROW((QuantConfig{QuantType::kFP4, bs, false}.validate()));
    if (bs >= 64) {
      EXPECT_NO_THROW((QuantConfig{QuantType::kInt8, bs, false}.validate()));
    }
  }
}

TEST(QuantConfigTest, ErrorsNameTheField) {
  for (int64_t bs : {0, 16, 48, 100, 8192}) {
    const Error e = error_of({QuantType::kNF4, bs, false});
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << bs;
    EXPECT_EQ(e.context().field, "blocksize");
    EXPECT_NE(std::string(e.what()).find("blocksize"), std::string::npos);
  }
  EXPECT_EQ(error_of({QuantType::kInt8, 32, false}).context().field, "blocksize");
  const Error e = error_of({QuantType::kInt8, 64, true});
  EXPECT_EQ(e.kind(), ErrorKind::kConfig);
  EXPECT_EQ(e.context().field, "double_quant");
  EXPECT_NE(std::string(e.what()).find("double_quant"), std::string::npos);
}

TEST(QuantTypeNameTest, RoundTripsAndRejectsUnknown) {
  for (QuantType t : {QuantType::kNF4, QuantType::kFP4, QuantType::kInt8}) {
    EXPECT_EQ(quant_type_from_name(quant_type_name(t)), t);
  }
  EXPECT_EQ(quant_type_name(QuantType::kNF4), "nf4");
  EXPECT_EQ(quant_type_from_name("NF4"), QuantType::kNF4);
  try {
    quant_type_from_name("q4_k");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("q4_k"), std::string::npos);
  }
}

TEST(QuantizedTensorTest, BitsandbytesLayoutAndRoundTrip) {
  at::manual_seed(5);
  at::Tensor w = at::randn({33, 7}, at::kBFloat16);  // 231 elements: odd, partial last block
  QuantizedTensor q = quantize(w, {QuantType::kNF4, 64, false});
  EXPECT_EQ(q.shape, (std::vector<int64_t>{33, 7}));
  EXPECT_EQ(q.dtype, at::kBFloat16);
  EXPECT_EQ(q.data.sizes(), (std::vector<int64_t>{116, 1}));
  EXPECT_EQ(q.data.scalar_type(), at::kByte);
  EXPECT_EQ(q.absmax.sizes(), (std::vector<int64_t>{4}));
  EXPECT_EQ(q.num_blocks(), 4);
  EXPECT_TRUE(at::equal(q.code, nf4_code()));
  at::Tensor y = q.dequantize();
  EXPECT_EQ(y.sizes(), w.sizes());
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  at::Tensor expected = dequantize_4bit(q.data, q.absmax, q.code, 231, 64, at::kBFloat16);
  EXPECT_TRUE(at::equal(y.reshape(-1), expected));
  QuantizedTensor moved = q.to(at::kCPU);
  EXPECT_TRUE(at::equal(moved.dequantize(at::kFloat), q.dequantize(at::kFloat)));

  QuantizedTensor i8 = quantize(w, {QuantType::kInt8, 64, false});
  EXPECT_EQ(i8.data.scalar_type(), at::kChar);
  EXPECT_EQ(i8.data.numel(), 231);
  EXPECT_FALSE(i8.code.defined());
  EXPECT_LT((i8.dequantize(at::kFloat) - w.to(at::kFloat)).abs().max().item<float>(), 0.05f);
}

TEST(QuantizedTensorTest, NbytesEqualsQuantizedBytesForAnyNumel) {
  const std::vector<QuantConfig> configs = {
      {QuantType::kNF4, 64, false},   {QuantType::kNF4, 64, true},   {QuantType::kFP4, 32, true},
      {QuantType::kNF4, 4096, true},  {QuantType::kFP4, 128, false}, {QuantType::kInt8, 64, false},
      {QuantType::kInt8, 4096, false}};
  const std::vector<int64_t> sizes = {
      1, 2, 3, 63, 64, 65, 127, 4097, 64 * 256, 64 * 256 + 1, 64 * 256 * 3 + 5, 99991};
  for (const QuantConfig& config : configs) {
    for (int64_t n : sizes) {
      const QuantizedTensor q = quantize(at::randn({n}), config);
      EXPECT_EQ(q.nbytes(), quantized_bytes(n, config).total())
          << quant_type_name(config.type) << " bs " << config.blocksize << " dq "
          << config.double_quant << " n " << n;
    }
  }
}

TEST(QuantizedBytesTest, HandArithmetic) {
  // NF4, blocksize 64, n = 4096 * 4096: data n/2, absmax 4 bytes per block, 16-float table.
  const int64_t n = 4096LL * 4096;
  const QuantizedBytes plain = quantized_bytes(n, {QuantType::kNF4, 64, false});
  EXPECT_EQ(plain.data, n / 2);
  EXPECT_EQ(plain.scales, 4 * (n / 64));
  EXPECT_EQ(plain.tables, 64);
  // Nested: a byte per block, a float per 256 blocks, the offset, and the 256-float map.
  const QuantizedBytes nested = quantized_bytes(n, {QuantType::kNF4, 64, true});
  EXPECT_EQ(nested.scales, n / 64 + 4 * (n / 64 / 256) + 4);
  EXPECT_EQ(nested.tables, 64 + 1024);
  const QuantizedBytes int8 = quantized_bytes(n, {QuantType::kInt8, 4096, false});
  EXPECT_EQ(int8.total(), n + 4 * (n / 4096));
  EXPECT_DOUBLE_EQ(plain.bits_per_parameter(n), 4.0 + 32.0 / 64 + 8.0 * 64 / n);
}

// Per-block bound on |absmax' - absmax| from the nested 8-bit quantization: half the larger gap
// of the dynamic map around the chosen code, times the nested absmax.
std::vector<float> nested_absmax_bound(const NestedAbsmax& nested) {
  const at::Tensor d = nested.code.contiguous();
  const float* map = d.data_ptr<float>();
  const at::Tensor codes = nested.codes.contiguous();
  const at::Tensor scales = nested.absmax.contiguous();
  std::vector<float> bound(codes.numel());
  for (int64_t b = 0; b < codes.numel(); ++b) {
    const int k = codes.data_ptr<uint8_t>()[b];
    float gap = 0;
    if (k > 0) gap = std::max(gap, map[k] - map[k - 1]);
    if (k < 255) gap = std::max(gap, map[k + 1] - map[k]);
    bound[b] = gap / 2 * scales.data_ptr<float>()[b / nested.blocksize];
  }
  return bound;
}

TEST(DoubleQuantTest, SavesAboutPoint373BitsPerParameterWithinTheNestedBound) {
  at::manual_seed(6);
  const int64_t rows = 1024, cols = 4096, n = rows * cols;
  at::Tensor w = at::randn({rows, cols}) * 0.02;
  const QuantizedTensor plain = quantize(w, {QuantType::kNF4, 64, false});
  const QuantizedTensor dq = quantize(w, {QuantType::kNF4, 64, true});

  // 32/64 - (8/64 + 32/(64*256)) = 0.373 bits per parameter, less the nested tables.
  const double saved = 8.0 * static_cast<double>(plain.nbytes() - dq.nbytes()) / n;
  const double expected = 32.0 / 64 - (8.0 / 64 + 32.0 / (64 * 256)) - 8.0 * (4 + 1024) / n;
  EXPECT_NEAR(saved, expected, 1e-12);
  EXPECT_NEAR(saved, 0.373, 0.003);
  std::cout << "NF4 blocksize 64, " << rows << "x" << cols << ": " << 8.0 * plain.nbytes() / n
            << " bits/param plain, " << 8.0 * dq.nbytes() / n << " with double quant (saves "
            << saved << ")\n";

  ASSERT_TRUE(dq.nested.has_value());
  EXPECT_FALSE(dq.absmax.defined());
  EXPECT_EQ(dq.nested->codes.numel(), n / 64);
  EXPECT_EQ(dq.nested->absmax.numel(), n / 64 / 256);
  EXPECT_TRUE(at::equal(dq.nested->code, dynamic_code_signed()));
  EXPECT_FLOAT_EQ(dq.nested->offset, plain.absmax.mean().item<float>());
  EXPECT_TRUE(at::equal(dq.data, plain.data));  // codes use the exact absmax

  const std::vector<float> bound = nested_absmax_bound(*dq.nested);
  const at::Tensor absmax_error = (dq.block_absmax() - plain.absmax).abs();
  const at::Tensor block_bound = at::tensor(at::ArrayRef<float>(bound));
  EXPECT_TRUE(absmax_error.le(block_bound * (1 + 1e-5) + 1e-9).all().item<bool>());

  // |code[q]| <= 1, so every dequantized value moves by at most its block's absmax bound.
  const at::Tensor change =
      (dq.dequantize(at::kFloat) - plain.dequantize(at::kFloat)).abs().view({-1, 64});
  EXPECT_TRUE(change.le(block_bound.view({-1, 1}) * (1 + 1e-5) + 1e-9).all().item<bool>());
  std::cout << "double quant: max |absmax' - absmax| / absmax = "
            << (absmax_error / plain.absmax).max().item<float>()
            << ", max |w' - w| change = " << change.max().item<float>() << "\n";
}

TEST(DoubleQuantTest, ConstantWeightsAndTinyTensors) {
  const QuantizedTensor c = quantize(at::full({128}, 0.5f), {QuantType::kNF4, 64, true});
  EXPECT_TRUE(at::equal(c.block_absmax(), at::full({2}, 0.5f)));
  EXPECT_TRUE(at::equal(c.dequantize(at::kFloat), at::full({128}, 0.5f)));
  const QuantizedTensor one = quantize(at::tensor({-3.0f}), {QuantType::kFP4, 64, true});
  EXPECT_EQ(one.dequantize(at::kFloat).item<float>(), -3.0f);
}

}  // namespace
}  // namespace qtrain

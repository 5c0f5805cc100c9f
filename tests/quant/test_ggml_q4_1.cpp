// ggml's Q4_1 block (quant/ggml/q4_1.h): the byte layout on a hand-worked block, the exact
// representation of values on a Q4_1 grid (fp16 d and m, codes 0..15), the round-trip error bound
// of the reference quantizer, and, against the reference implementations, the bytes of ggml's
// quantize_row_q4_1_ref (llama-cpp-python's libggml-base) and gguf-py's dequantize (skipped
// without them unless QTRAIN_REQUIRE_INTEROP=1).
#include "formats/gguf/gguf_mix.h"
#include "formats/gguf/gguf_types.h"
#include "quant/ggml/ggml_fp16.h"
#include "quant/ggml/q4_1.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <vector>

namespace qtrain {
namespace {

std::vector<uint8_t> quantize(const at::Tensor& x) {
  std::vector<uint8_t> bytes(x.numel() / kQK4_1 * sizeof(BlockQ4_1));
  quantize_q4_1(x.contiguous().data_ptr<float>(), bytes.data(), x.numel());
  return bytes;
}

at::Tensor dequantize(const std::vector<uint8_t>& bytes, int64_t n) {
  at::Tensor y = at::empty({n}, at::kFloat);
  dequantize_q4_1(bytes.data(), y.data_ptr<float>(), n);
  return y;
}

TEST(GgmlQ4_1, HandWorkedBlock) {
  // min -1, max 14: d = 1, m = -1, q = x + 1; value j in the low nibble of byte j, j + 16 high.
  at::Tensor x = at::zeros({32});
  x[0] = -1;
  x[1] = 14;
  x[2] = 2.4f;    // 3.4 + 0.5 truncates to 3
  x[16] = 5.5f;   // 6.5 + 0.5 truncates to 7 (ties round up)
  x[17] = -0.6f;  // 0.4 + 0.5 truncates to 0
  const std::vector<uint8_t> bytes = quantize(x.view({32}));
  ASSERT_EQ(bytes.size(), 20u);
  uint16_t d, m;
  std::memcpy(&d, bytes.data(), 2);
  std::memcpy(&m, bytes.data() + 2, 2);
  EXPECT_EQ(d, 0x3C00);  // 1.0
  EXPECT_EQ(m, 0xBC00);  // -1.0
  EXPECT_EQ(bytes[4], 0 | (7 << 4));
  EXPECT_EQ(bytes[5], 15 | (0 << 4));
  EXPECT_EQ(bytes[6], 3 | (1 << 4));
  EXPECT_EQ(bytes[7], 1 | (1 << 4));  // zeros: q = 1
  const at::Tensor y = dequantize(bytes, 32);
  EXPECT_EQ(y[2].item<float>(), 2.0f);
  EXPECT_EQ(y[16].item<float>(), 6.0f);
}

// Any fp16 d >= 0, fp16 m and codes 0..15 is held exactly by q4_1_block_on_grid, and the
// reference quantizer finds the same grid again when the codes reach both 0 and 15.
TEST(GgmlQ4_1, GridInputsAreRepresentedExactly) {
  at::manual_seed(7);
  int64_t reference_exact = 0;
  for (int trial = 0; trial < 500; ++trial) {
    const float d = static_cast<float>(c10::Half(std::exp(at::randn({1}).item<float>() * 4 - 4)));
    const float m = static_cast<float>(c10::Half(at::randn({1}).item<float>() * 3));
    at::Tensor codes = at::randint(0, 16, {32}, at::kByte);
    codes[trial % 32] = 0;
    codes[(trial + 7) % 32] = 15;
    const BlockQ4_1 block = q4_1_block_on_grid(d, m, codes.data_ptr<uint8_t>());
    std::vector<uint8_t> bytes(sizeof(block));
    std::memcpy(bytes.data(), &block, sizeof(block));
    const at::Tensor y = dequantize(bytes, 32);
    // The values ggml computes: float(q) * d + m in float32.
    const at::Tensor grid = codes.to(at::kFloat) * d + m;
    ASSERT_TRUE(at::equal(y, grid)) << "d " << d << " m " << m;
    EXPECT_EQ(ggml_fp16_value(block.d), d);
    EXPECT_EQ(ggml_fp16_value(block.m), m);

    // The reference quantizer on the grid values: min = m, (max - min) / 15 rounds back to d.
    const std::vector<uint8_t> again = quantize(grid);
    reference_exact += at::equal(dequantize(again, 32), grid);
  }
  // (m + 15 d) - m can lose a bit of d in float32 when |m| >> d; it must not lose more.
  EXPECT_GE(reference_exact, 480) << "of 500 grid blocks re-quantized exactly";
}

TEST(GgmlQ4_1, RoundTripStaysWithinHalfAStepPlusFp16Rounding) {
  at::manual_seed(3);
  std::vector<at::Tensor> rows = {at::randn({1024}),        at::rand({1024}) * 2 - 1,
                                  at::randn({1024}).pow(3), at::randn({1024}) * 1e-3 + 0.01,
                                  at::randn({1024}) * 300,  at::zeros({1024}),
                                  at::full({1024}, -0.75)};
  for (const at::Tensor& row : rows) {
    const at::Tensor x = row.to(at::kFloat).contiguous();
    const at::Tensor y = dequantize(quantize(x), x.numel());
    const at::Tensor xb = x.view({-1, 32}), err = (y - x).abs().view({-1, 32});
    const at::Tensor lo = std::get<0>(xb.min(-1)), hi = std::get<0>(xb.max(-1));
    const at::Tensor d = (hi - lo) / 15;
    // Half a step of the float32 d; d and m are then stored as fp16 (2^-11 relative each, the d
    // error times up to 15 steps); 1e-6 relative for float32 arithmetic.
    const at::Tensor bound = d * (0.5 + 15 * std::ldexp(1.0, -11)) +
                             lo.abs() * std::ldexp(1.0, -11) + (hi.abs() + lo.abs()) * 1e-6;
    EXPECT_TRUE((std::get<0>(err.max(-1)) <= bound).all().item<bool>())
        << "worst error / bound " << (std::get<0>(err.max(-1)) / bound).max().item<double>();
  }
}

TEST(GgmlQ4_1, IsAGgufTypeAndOutputType) {
  const GgmlTypeTraits& t = ggml_type_traits(GgmlType::kQ4_1);
  EXPECT_TRUE(t.can_encode);
  EXPECT_EQ(t.block_bytes, static_cast<int64_t>(sizeof(BlockQ4_1)));
  at::manual_seed(1);
  const at::Tensor x = at::randn({3, 64});
  std::vector<uint8_t> via_gguf(3 * 2 * 20);
  ggml_encode_rows(GgmlType::kQ4_1, x, via_gguf.data());
  EXPECT_EQ(via_gguf, quantize(x.reshape({-1})));

  EXPECT_EQ(parse_gguf_outtype("q4_1"), GgufOutType::kQ4_1);
  EXPECT_EQ(gguf_file_type(GgufOutType::kQ4_1), 3u);  // LLAMA_FTYPE_MOSTLY_Q4_1
  GgufMixTensor output{.name = "output.weight", .n_dims = 2, .ne0 = 64};
  GgufMixTensor ffn{
      .name = "blk.0.ffn_down.weight", .n_dims = 2, .ne0 = 64, .layer = 0, .n_layers = 2};
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_1, ffn), GgmlType::kQ4_1);
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_1, output), GgmlType::kQ8_0);  // 64 % 256 != 0
  output.ne0 = 256;
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_1, output), GgmlType::kQ6_K);
}

void write_raw(const std::string& path, const void* data, size_t n) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

TEST(GgmlQ4_1, BytesEqualGgmlAndValuesEqualGgufPy) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  testing::ScratchDir dir;
  at::manual_seed(5);
  at::Tensor x = at::cat({at::randn({4, 256}), at::randn({2, 256}).pow(3) * 10, at::zeros({1, 256}),
                          at::full({1, 256}, 0.3), (at::randint(0, 16, {2, 256}) * 0.25 - 1.0)})
                     .to(at::kFloat)
                     .contiguous();
  const std::vector<uint8_t> bytes = quantize(x.reshape({-1}));
  const at::Tensor y = dequantize(bytes, x.numel());
  write_raw(dir.file("x.f32"), x.data_ptr<float>(), x.numel() * sizeof(float));
  write_raw(dir.file("Q4_1.bin"), bytes.data(), bytes.size());
  write_raw(dir.file("Q4_1.deq.f32"), y.data_ptr<float>(), y.numel() * sizeof(float));
  testing::write_file(
      dir.file("meta.json"),
      nlohmann::json{{"rows", x.size(0)}, {"cols", x.size(1)}, {"types", {"Q4_1"}}}.dump());
  std::string out;
  ASSERT_EQ(testing::run_reference_script("gguf_quants.py", {dir.path()}, &out), 0) << out;
  const auto r = nlohmann::json::parse(out.substr(out.find('{')))["Q4_1"];
  EXPECT_TRUE(r["dequant_equal"].get<bool>()) << r.dump();
  if (r["ggml_bytes_equal"].is_null()) {
    const char* require = std::getenv("QTRAIN_REQUIRE_INTEROP");
    if (require && std::string(require) == "1") FAIL() << "llama_cpp missing from the venv";
    GTEST_SKIP() << "llama_cpp not installed: ggml's bytes not compared";
  }
  EXPECT_TRUE(r["ggml_bytes_equal"].get<bool>()) << r.dump();
}

}  // namespace
}  // namespace qtrain

// Group-wise asymmetric INT4 (GPTQ's RTN quantizer, QA-LoRA's base format): exact agreement with
// a scalar re-implementation and with a torch reference script, the reconstruction bound, tie
// rounding, nibble order, errors, and the grad_input-only linear.
#include "core/error.h"
#include "formats/safetensors/safetensors.h"
#include "quant/int4_group.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <cfenv>
#include <cmath>
#include <cstring>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

struct ScalarReference {
  std::vector<uint8_t> codes;  // [out * in]
  std::vector<float> scales;   // [out * groups]
  std::vector<float> zeros;
};

// GPTQ's quantizer written out element by element. Each operation is done in float64 and rounded
// to float32 right away, which is exactly float32 arithmetic (float64 has more than 2 * 24 + 2
// bits, so the double rounding is innocuous) — GPTQ computes in float32.
ScalarReference scalar_rtn(const at::Tensor& weight, int64_t g) {
  at::Tensor w = weight.to(at::kFloat).contiguous();
  const int64_t out = w.size(0), in = w.size(1), groups = in / g;
  const float* p = w.data_ptr<float>();
  auto f32 = [](double v) { return static_cast<float>(v); };
  EXPECT_EQ(std::fegetround(), FE_TONEAREST);  // nearbyint rounds half to even
  ScalarReference ref{std::vector<uint8_t>(out * in), std::vector<float>(out * groups),
                      std::vector<float>(out * groups)};
  for (int64_t n = 0; n < out; ++n) {
    for (int64_t G = 0; G < groups; ++G) {
      const float* x = p + n * in + G * g;
      float xmin = 0, xmax = 0;
      for (int64_t j = 0; j < g; ++j) {
        xmin = std::min(xmin, x[j]);
        xmax = std::max(xmax, x[j]);
      }
      if (xmin == 0 && xmax == 0) xmin = -1, xmax = 1;
      const float scale = f32(double(f32(double(xmax) - double(xmin))) / 15.0);
      const float zero = f32(std::nearbyint(double(f32(-double(xmin) / double(scale)))));
      ref.scales[n * groups + G] = scale;
      ref.zeros[n * groups + G] = zero;
      for (int64_t j = 0; j < g; ++j) {
        const float r = f32(std::nearbyint(double(f32(double(x[j]) / double(scale)))));
        const float q = std::clamp(f32(double(r) + double(zero)), 0.0f, 15.0f);
        ref.codes[n * in + G * g + j] = static_cast<uint8_t>(q);
      }
    }
  }
  return ref;
}

// Rows with different magnitudes and signs, an all-positive and an all-negative group, an
// all-zero group (the (-1, +1) case) and a single outlier.
at::Tensor test_weight(int64_t out, int64_t in, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor w = at::randn({out, in}, gen) *
                 at::exp(at::randn({out, 1}, gen));  // per-row magnitudes over ~3 decades
  w[0].narrow(0, 0, 32).abs_();
  w[1].narrow(0, 0, 32).abs_().neg_();
  w[2].narrow(0, 0, 32).zero_();
  w[3][5] = 40.0;
  return w;
}

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.contiguous(), y = b.contiguous();
  return x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type() &&
         std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

TEST(Int4GroupTest, AgreesExactlyWithAScalarReimplementationOfGptq) {
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t g : {32, 64, 128}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " g=" + std::to_string(g));
      const at::Tensor w = test_weight(12, 256, 7 + g).to(dtype);
      const Int4GroupTensor q = quantize_int4_group(w, g);
      const ScalarReference ref = scalar_rtn(w, g);
      ASSERT_EQ(q.shape, (std::vector<int64_t>{12, 256}));
      EXPECT_EQ(q.dtype, dtype);
      EXPECT_EQ(q.codes.scalar_type(), at::kByte);
      EXPECT_EQ(q.codes.sizes(), (std::vector<int64_t>{12, 128}));
      EXPECT_EQ(q.scales.sizes(), (std::vector<int64_t>{12, 256 / g}));
      const at::Tensor codes = q.unpacked_codes().contiguous();
      EXPECT_EQ(std::memcmp(codes.data_ptr(), ref.codes.data(), ref.codes.size()), 0);
      EXPECT_EQ(std::memcmp(q.scales.data_ptr(), ref.scales.data(), ref.scales.size() * 4), 0);
      EXPECT_EQ(std::memcmp(q.zeros.data_ptr(), ref.zeros.data(), ref.zeros.size() * 4), 0);
    }
  }
}

TEST(Int4GroupTest, ReconstructionIsWithinHalfAScaleAndZerosAreIntegerCodes) {
  const at::Tensor w = test_weight(16, 512, 3);
  for (int64_t g : {32, 64, 128}) {
    SCOPED_TRACE(g);
    const Int4GroupTensor q = quantize_int4_group(w, g);
    const at::Tensor deq = q.dequantize(at::kFloat);
    const at::Tensor half_scale = (q.scales / 2).repeat_interleave(g, /*dim=*/1);  // [out, in]
    // Every group contains 0 and spans at most 15 steps, so nothing is clamped by more than
    // half a step; float32 rounding of s * (q - z) adds a few ulps.
    const at::Tensor excess = (w - deq).abs() - half_scale * (1 + 1e-6);
    EXPECT_LE(excess.max().item<float>(), 0.0f);
    const at::Tensor codes = q.unpacked_codes();
    EXPECT_GE(codes.min().item<int>(), 0);
    EXPECT_LE(codes.max().item<int>(), 15);
    EXPECT_TRUE(at::equal(q.zeros, at::round(q.zeros)));
    EXPECT_GE(q.zeros.min().item<float>(), 0.0f);
    EXPECT_LE(q.zeros.max().item<float>(), 15.0f);
    if (g == 32) {
      // The all-zero group gets xmin = -1, xmax = 1: scale = float32(2/15), which rounds up, so
      // -xmin / scale = 7.4999996 and the zero is 7, not 8. Zero still dequantizes to zero.
      EXPECT_EQ(q.scales[2][0].item<float>(), 2.0f / 15.0f);
      EXPECT_EQ(q.zeros[2][0].item<float>(), 7.0f);
      EXPECT_TRUE(at::equal(deq[2].narrow(0, 0, 32), at::zeros({32})));
    }
  }
}

TEST(Int4GroupTest, ReconstructionErrorOfGaussianWeights) {
  // Figures for the record; the bound is loose so the test only catches a broken quantizer.
  const at::Tensor w = at::randn({256, 512}, at::make_generator<at::CPUGeneratorImpl>(17));
  for (int64_t g : {32, 64, 128}) {
    const at::Tensor deq = quantize_int4_group(w, g).dequantize(at::kFloat);
    const double rel_rms = ((w - deq).pow(2).mean() / w.pow(2).mean()).sqrt().item<double>();
    std::printf("int4 g=%lld on N(0,1): relative RMS error %.4f, max |W - deq| %.4f\n",
                static_cast<long long>(g), rel_rms, (w - deq).abs().max().item<double>());
    EXPECT_LT(rel_rms, 0.15);
    EXPECT_GT(rel_rms, 0.02);
  }
}

TEST(Int4GroupTest, TiesRoundHalfToEvenInZerosAndCodes) {
  // xmin = -1.25, xmax = 6.25: scale = 7.5 / 15 = 0.5 exactly, -xmin / scale = 2.5 -> zero 2.
  at::Tensor w = at::zeros({1, 32});
  w[0][0] = -1.25;
  w[0][1] = 6.25;
  w[0][2] = 0.25;   // w / s = 0.5 -> 0 -> q = 2
  w[0][3] = 0.75;   // 1.5 -> 2 -> q = 4
  w[0][4] = 1.25;   // 2.5 -> 2 -> q = 4
  w[0][5] = -0.75;  // -1.5 -> -2 -> q = 0
  const Int4GroupTensor q = quantize_int4_group(w, 32);
  EXPECT_EQ(q.scales[0][0].item<float>(), 0.5f);
  EXPECT_EQ(q.zeros[0][0].item<float>(), 2.0f);
  const at::Tensor codes = q.unpacked_codes()[0];
  // -1.25 / 0.5 = -2.5 -> -2 -> 0; 6.25 / 0.5 = 12.5 -> 12 -> 14.
  const std::vector<int> expected = {0, 14, 2, 4, 4, 0, 2};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(codes[i].item<int>(), expected[i]) << "element " << i;
  }
}

TEST(Int4GroupTest, PacksTheEvenInputIndexIntoTheLowNibble) {
  // Values 0..15 in every group: xmin = 0, xmax = 15 -> scale 1, zero 0, q = value.
  at::Tensor w = (at::arange(64, at::kFloat).remainder(16)).view({1, 64});
  w = at::cat({w, 15 - w});  // second row counts down
  const Int4GroupTensor q = quantize_int4_group(w, 32);
  EXPECT_TRUE(at::equal(q.zeros, at::zeros({2, 2})));
  EXPECT_TRUE(at::equal(q.scales, at::ones({2, 2})));
  const at::Tensor bytes = q.codes;
  EXPECT_EQ(bytes[0][0].item<int>(), 0x10);  // q0 = 0 low, q1 = 1 high
  EXPECT_EQ(bytes[0][1].item<int>(), 0x32);
  EXPECT_EQ(bytes[0][7].item<int>(), 0xFE);
  EXPECT_EQ(bytes[1][0].item<int>(), 0xEF);  // 15 low, 14 high
  EXPECT_TRUE(at::equal(q.dequantize(at::kFloat), w));
  EXPECT_EQ(q.nbytes(), 2 * 32 + 2 * 2 * 4 * 2);
}

TEST(Int4GroupTest, BitExactWithTheTorchReferenceScript) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  t::ScratchDir dir("int4-rtn");
  const NamedTensors inputs = {{"mixed", test_weight(12, 256, 11)},
                               {"bf16", test_weight(8, 128, 12).to(at::kBFloat16)},
                               {"tiny", at::randn({4, 64}) * 1e-3}};
  write_safetensors(dir.file("in.safetensors"), inputs);
  std::string log;
  ASSERT_EQ(t::run_reference_script(
                "qalora_rtn.py", {dir.file("in.safetensors"), dir.file("out.safetensors")}, &log),
            0)
      << log;
  const CheckpointReader ref = CheckpointReader::open_file(dir.file("out.safetensors"));
  int compared = 0;
  for (const auto& [name, w] : inputs) {
    for (int64_t g : {32, 64, 128}) {
      if (w.size(1) % g) continue;
      SCOPED_TRACE(name + " g=" + std::to_string(g));
      const std::string key = name + ".g" + std::to_string(g);
      const Int4GroupTensor q = quantize_int4_group(w, g);
      EXPECT_TRUE(bit_equal(q.unpacked_codes(), ref.tensor(key + ".codes")));
      EXPECT_TRUE(bit_equal(q.scales, ref.tensor(key + ".scales")));
      EXPECT_TRUE(bit_equal(q.zeros, ref.tensor(key + ".zeros")));
      EXPECT_TRUE(bit_equal(q.dequantize(at::kFloat), ref.tensor(key + ".dequant")));
      ++compared;
    }
  }
  EXPECT_EQ(compared, 3 + 3 + 2);
}

TEST(Int4GroupTest, BadGroupSizeOrShapeIsNamed) {
  try {
    quantize_int4_group(at::randn({4, 64}), 16);
    FAIL() << "group size 16 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("16"), std::string::npos) << e.what();
  }
  try {
    quantize_int4_group(at::randn({4, 48}), 32);
    FAIL() << "in = 48 accepted with group 32";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kShape);
    EXPECT_NE(std::string(e.what()).find("[4, 48]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(quantize_int4_group(at::randn({64}), 32), Error);
  auto q = std::make_shared<const Int4GroupTensor>(quantize_int4_group(at::randn({8, 64}), 32));
  EXPECT_THROW(int4_group_linear(at::randn({2, 63}), q, {}), Error);
}

TEST(Int4GroupTest, LinearForwardAndGradInputEqualTheDequantizedDenseLinear) {
  at::manual_seed(0);
  for (bool with_bias : {false, true}) {
    SCOPED_TRACE(with_bias);
    auto q = std::make_shared<const Int4GroupTensor>(quantize_int4_group(at::randn({24, 64}), 32));
    const at::Tensor dense = q->dequantize(at::kDouble);
    at::Tensor bias = with_bias ? at::randn({24}, at::kDouble).requires_grad_(true) : at::Tensor();
    at::Tensor x = at::randn({3, 5, 64}, at::kDouble).requires_grad_(true);
    at::Tensor y = int4_group_linear(x, q, bias);
    const c10::optional<at::Tensor> b = with_bias ? c10::optional<at::Tensor>(bias) : c10::nullopt;
    EXPECT_TRUE(at::allclose(y, at::linear(x, dense, b), 1e-12, 1e-12));

    at::Tensor upstream = at::randn(y.sizes(), at::kDouble);
    std::vector<at::Tensor> inputs = {x};
    if (with_bias) inputs.push_back(bias);
    auto grads = torch::autograd::grad({y}, inputs, {upstream});
    at::Tensor x2 = x.detach().clone().requires_grad_(true);
    at::Tensor b2 = with_bias ? bias.detach().clone().requires_grad_(true) : at::Tensor();
    std::vector<at::Tensor> inputs2 = {x2};
    if (with_bias) inputs2.push_back(b2);
    at::Tensor y2 = at::linear(x2, dense, with_bias ? c10::optional<at::Tensor>(b2) : c10::nullopt);
    auto expected = torch::autograd::grad({y2}, inputs2, {upstream});
    EXPECT_TRUE(at::allclose(grads[0], expected[0], 1e-12, 1e-12)) << "grad_input";
    if (with_bias) {
      EXPECT_TRUE(at::allclose(grads[1], expected[1], 1e-12, 1e-12)) << "grad_bias";
    }
    EXPECT_FALSE(q->scales.requires_grad());
    EXPECT_FALSE(q->zeros.requires_grad());
  }
}

TEST(Int4GroupTest, MovesBetweenDevicesUnchanged) {
  const Int4GroupTensor q = quantize_int4_group(at::randn({8, 64}), 64);
  const Int4GroupTensor moved = q.to(c10::kCPU);
  EXPECT_TRUE(at::equal(moved.codes, q.codes));
  EXPECT_EQ(moved.group_size, 64);
  EXPECT_EQ(moved.nbytes(), 8 * 32 + 8 * 1 * 4 * 2);
}

TEST(Int4GroupTest, CudaQuantizationIsBitIdenticalToCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Tensor w = test_weight(64, 512, 5);
  for (int64_t g : {32, 128}) {
    const Int4GroupTensor cpu = quantize_int4_group(w, g);
    const Int4GroupTensor gpu = quantize_int4_group(w.to(at::kCUDA), g).to(c10::kCPU);
    EXPECT_TRUE(bit_equal(cpu.codes, gpu.codes)) << g;
    EXPECT_TRUE(bit_equal(cpu.scales, gpu.scales)) << g;
    EXPECT_TRUE(bit_equal(cpu.zeros, gpu.zeros)) << g;
  }
}

}  // namespace
}  // namespace qtrain

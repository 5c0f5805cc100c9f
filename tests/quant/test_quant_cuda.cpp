// The CUDA blockwise kernels against the CPU reference: codes and absmax bit for bit, dequantized
// values exactly equal in float32 and within one rounding in bf16/fp16, for every input dtype,
// block sizes on and off the vector path, partial last blocks, odd n, ties and edge cases.
// Skipped without a GPU.
#include "quant/blockwise.h"
#include "quant/codebooks.h"
#include "quant/quantized_tensor.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace qtrain {
namespace {

#define SKIP_WITHOUT_CUDA() \
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device"

const std::vector<at::ScalarType> kInputDtypes = {at::kFloat, at::kHalf, at::kBFloat16};
const std::vector<at::ScalarType> kOutputDtypes = {at::kFloat, at::kHalf, at::kBFloat16,
                                                   at::kDouble};
// Element counts around block and vector-group edges, odd ones included.
const std::vector<int64_t> kSizes = {1, 2, 15, 17, 63, 64, 65, 127, 128, 129, 1001, 4096, 12305};

at::Device gpu() {
  return at::Device(at::kCUDA, 0);
}

// Random weights with a spread of scales per block, an all-zero stretch and exact zeros.
at::Tensor sample(int64_t n, at::ScalarType dtype, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn({n}) * at::exp(at::randn({n}) * 2.0);
  if (n > 300) x.slice(0, 128, 300).zero_();
  if (n > 7) x.slice(0, 0, n, 7).mul_(0.0);
  return x.to(dtype);
}

std::string label(at::ScalarType dtype, int64_t n, int64_t blocksize) {
  return std::string(c10::toString(dtype)) + " n=" + std::to_string(n) +
         " blocksize=" + std::to_string(blocksize);
}

void expect_identical(const at::Tensor& cuda, const at::Tensor& cpu, const std::string& what) {
  ASSERT_TRUE(cuda.is_cuda()) << what;
  const at::Tensor back = cuda.cpu();
  ASSERT_EQ(back.scalar_type(), cpu.scalar_type()) << what;
  ASSERT_EQ(back.sizes(), cpu.sizes()) << what;
  EXPECT_TRUE(at::equal(back, cpu))
      << what << ": first difference at " << (back != cpu).nonzero().slice(0, 0, 1);
}

// float32/float64: identical; bf16/fp16: within one unit of the output's precision.
void expect_dequantized(const at::Tensor& cuda, const at::Tensor& cpu, const std::string& what) {
  if (cpu.scalar_type() == at::kFloat || cpu.scalar_type() == at::kDouble) {
    expect_identical(cuda, cpu, what);
    return;
  }
  const double rtol = cpu.scalar_type() == at::kBFloat16 ? 1.0 / 128 : 1.0 / 1024;
  EXPECT_TRUE(at::allclose(cuda.cpu().to(at::kFloat), cpu.to(at::kFloat), rtol, 0.0)) << what;
}

TEST(QuantCudaTest, FourBitMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    const at::Tensor code = type == QuantType::kNF4 ? nf4_code() : fp4_code();
    for (int64_t blocksize : {64, 128, 32, 4096, 4, 34}) {
      for (at::ScalarType dtype : kInputDtypes) {
        for (int64_t n : kSizes) {
          const std::string what = quant_type_name(type) + " " + label(dtype, n, blocksize);
          const at::Tensor x = sample(n, dtype, n * 31 + blocksize);
          auto [packed, absmax] = quantize_4bit(x, type, blocksize);
          auto [packed_gpu, absmax_gpu] = quantize_4bit(x.to(gpu()), type, blocksize);
          expect_identical(packed_gpu, packed, what + " codes");
          expect_identical(absmax_gpu, absmax, what + " absmax");
          for (at::ScalarType out : kOutputDtypes) {
            const at::Tensor y = dequantize_4bit(packed, absmax, code, n, blocksize, out);
            const at::Tensor y_gpu = dequantize_4bit(packed.to(gpu()), absmax.to(gpu()),
                                                     code.to(gpu()), n, blocksize, out);
            expect_dequantized(y_gpu, y, what + " dequantize to " + c10::toString(out));
          }
        }
      }
    }
  }
}

TEST(QuantCudaTest, FourBitTiesEdgeCasesAndNonFiniteInputs) {
  SKIP_WITHOUT_CUDA();
  // Every NF4 and FP4 threshold and its float neighbours with absmax 1 (x * (1/1) == x), then
  // NaN, a tiny negative, -0, an all-NaN block, an all-zero block and a partial last block.
  std::vector<float> v = {1.0f};
  for (float t : {-0.8480964004993439f,
                  -0.6106329262256622f,
                  -0.4599952697753906f,
                  -0.33967943489551544f,
                  -0.23460740596055984f,
                  -0.13791173323988914f,
                  -0.045525018125772476f,
                  0.03979014977812767f,
                  0.1202552504837513f,
                  0.2035212516784668f,
                  0.2920137718319893f,
                  0.3893125355243683f,
                  0.5016634166240692f,
                  0.6427869200706482f,
                  0.8614784181118011f,
                  0.00260417f,
                  0.0859375f,
                  0.20833333f,
                  0.29166667f,
                  0.4166667f,
                  0.583333f,
                  0.8333333f}) {
    for (float s : {t, -t}) {
      v.insert(v.end(), {s, std::nextafter(s, 2.0f), std::nextafter(s, -2.0f)});
    }
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  v.insert(v.end(), {nan, -1e-30f, -0.0f, 0.0f});
  v.resize(192, 0.5f);
  v.insert(v.end(), 64, nan);   // block 3: all NaN
  v.insert(v.end(), 64, 0.0f);  // block 4: all zero
  v.push_back(-3.0f);           // block 5: partial, odd n
  const at::Tensor x = at::tensor(at::ArrayRef<float>(v), at::kFloat);
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    auto [packed, absmax] = quantize_4bit(x, type, 64);
    auto [packed_gpu, absmax_gpu] = quantize_4bit(x.to(gpu()), type, 64);
    expect_identical(packed_gpu, packed, quant_type_name(type) + " codes");
    expect_identical(absmax_gpu, absmax, quant_type_name(type) + " absmax");
  }
}

TEST(QuantCudaTest, DequantizeMisalignedAndNonContiguousInputs) {
  SKIP_WITHOUT_CUDA();
  const int64_t n = 4096;
  auto [packed, absmax] = quantize_4bit(sample(n + 2, at::kBFloat16, 7), QuantType::kNF4, 64);
  // A view one byte into the storage takes the scalar path; the result must not change.
  const at::Tensor shifted = packed.slice(0, 1, n / 2 + 1);
  const at::Tensor shifted_gpu = packed.to(gpu()).slice(0, 1, n / 2 + 1);
  const at::Tensor scales = at::full({n / 64}, 0.75f);
  const at::Tensor y = dequantize_4bit(shifted, scales, nf4_code(), n, 64, at::kBFloat16);
  const at::Tensor y_gpu =
      dequantize_4bit(shifted_gpu, scales.to(gpu()), nf4_code().to(gpu()), n, 64, at::kBFloat16);
  expect_dequantized(y_gpu, y, "misaligned packed");
  // A transposed input is quantized in its logical row-major order on both devices.
  const at::Tensor w = sample(64 * 48, at::kHalf, 8).view({64, 48}).t();
  auto [p, a] = quantize_4bit(w, QuantType::kNF4, 64);
  auto [p_gpu, a_gpu] = quantize_4bit(w.to(gpu()), QuantType::kNF4, 64);
  expect_identical(p_gpu, p, "transposed codes");
  expect_identical(a_gpu, a, "transposed absmax");
}

TEST(QuantCudaTest, EightBitMatchesCpuIncludingMidpointTies) {
  SKIP_WITHOUT_CUDA();
  for (const at::Tensor& code : {dynamic_code_signed(), dynamic_code_unsigned()}) {
    // Exact midpoints of the code and their neighbours, with a 1.0 so absmax is 1.
    const at::Tensor c = code.contiguous();
    const float* d = c.data_ptr<float>();
    std::vector<float> ties = {1.0f};
    for (int k = 0; k < 255; ++k) {
      const float m = (d[k] + d[k + 1]) * 0.5f;
      ties.insert(ties.end(), {m, std::nextafter(m, 2.0f), std::nextafter(m, -2.0f)});
    }
    const at::Tensor t = at::tensor(at::ArrayRef<float>(ties), at::kFloat);
    auto [q, a] = quantize_blockwise_8bit(t, code, 4096);
    auto [q_gpu, a_gpu] = quantize_blockwise_8bit(t.to(gpu()), code.to(gpu()), 4096);
    expect_identical(q_gpu, q, "midpoint codes");
    expect_identical(a_gpu, a, "midpoint absmax");

    for (int64_t blocksize : {256, 4096, 64, 100}) {
      for (at::ScalarType dtype : kInputDtypes) {
        for (int64_t n : kSizes) {
          const std::string what = label(dtype, n, blocksize);
          const at::Tensor x = sample(n, dtype, n * 17 + blocksize);
          auto [codes, absmax] = quantize_blockwise_8bit(x, code, blocksize);
          auto [codes_gpu, absmax_gpu] =
              quantize_blockwise_8bit(x.to(gpu()), code.to(gpu()), blocksize);
          expect_identical(codes_gpu, codes, what + " codes");
          expect_identical(absmax_gpu, absmax, what + " absmax");
          for (at::ScalarType out : kOutputDtypes) {
            const at::Tensor y = dequantize_blockwise_8bit(codes, absmax, code, blocksize, out);
            const at::Tensor y_gpu = dequantize_blockwise_8bit(codes.to(gpu()), absmax.to(gpu()),
                                                               code.to(gpu()), blocksize, out);
            expect_dequantized(y_gpu, y, what + " dequantize to " + c10::toString(out));
          }
        }
      }
    }
  }
}

TEST(QuantCudaTest, Int8MatchesCpuIncludingHalves) {
  SKIP_WITHOUT_CUDA();
  // absmax 127: q = round(x) exactly, so the halves test the rounding direction.
  const at::Tensor halves =
      at::tensor({127.0f, 0.5f, -0.5f, 1.5f, -2.5f, 126.5f, -126.5f, 0.0f, -0.0f}, at::kFloat);
  auto [hq, ha] = quantize_int8(halves, 64);
  auto [hq_gpu, ha_gpu] = quantize_int8(halves.to(gpu()), 64);
  expect_identical(hq_gpu, hq, "halves");
  expect_identical(ha_gpu, ha, "halves absmax");

  for (int64_t blocksize : {64, 256, 4096, 100}) {
    for (at::ScalarType dtype : kInputDtypes) {
      for (int64_t n : kSizes) {
        const std::string what = label(dtype, n, blocksize);
        const at::Tensor x = sample(n, dtype, n * 13 + blocksize);
        auto [q, absmax] = quantize_int8(x, blocksize);
        auto [q_gpu, absmax_gpu] = quantize_int8(x.to(gpu()), blocksize);
        expect_identical(q_gpu, q, what + " codes");
        expect_identical(absmax_gpu, absmax, what + " absmax");
        for (at::ScalarType out : kOutputDtypes) {
          const at::Tensor y = dequantize_int8(q, absmax, blocksize, out);
          const at::Tensor y_gpu = dequantize_int8(q.to(gpu()), absmax.to(gpu()), blocksize, out);
          expect_dequantized(y_gpu, y, what + " dequantize to " + c10::toString(out));
        }
      }
    }
  }
}

TEST(QuantCudaTest, EmptyInputs) {
  SKIP_WITHOUT_CUDA();
  const at::Tensor empty = at::empty({0}, at::TensorOptions().dtype(at::kBFloat16).device(gpu()));
  auto [packed, absmax] = quantize_4bit(empty, QuantType::kNF4, 64);
  EXPECT_EQ(packed.numel(), 0);
  EXPECT_EQ(absmax.numel(), 0);
  EXPECT_EQ(dequantize_4bit(packed, absmax, nf4_code().to(gpu()), 0, 64, at::kBFloat16).numel(), 0);
  auto [q, a] = quantize_int8(empty, 64);
  EXPECT_EQ(dequantize_int8(q, a, 64, at::kHalf).numel(), 0);
}

TEST(QuantCudaTest, DoubleQuantizedTensorMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    const at::Tensor w = sample(300 * 1000, at::kBFloat16, 11).view({300, 1000});
    const QuantConfig config{type, 64, true};
    const QuantizedTensor cpu = quantize(w, config);
    const QuantizedTensor gpu_q = quantize(w.to(gpu()), config);
    ASSERT_TRUE(cpu.nested.has_value());
    ASSERT_TRUE(gpu_q.nested.has_value());
    EXPECT_EQ(gpu_q.device(), gpu());
    expect_identical(gpu_q.data, cpu.data, "packed");
    EXPECT_EQ(gpu_q.nested->offset, cpu.nested->offset);
    expect_identical(gpu_q.nested->codes, cpu.nested->codes, "nested codes");
    expect_identical(gpu_q.nested->absmax, cpu.nested->absmax, "nested absmax");
    expect_identical(gpu_q.dequantize(at::kFloat), cpu.dequantize(at::kFloat), "dequantized");
    expect_dequantized(gpu_q.dequantize(at::kBFloat16), cpu.dequantize(at::kBFloat16),
                       "dequantized bf16");
  }
}

}  // namespace
}  // namespace qtrain

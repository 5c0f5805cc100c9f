// The sliced frozen linear and the row dequantizers behind it: any row range of a quantized weight
// dequantizes to exactly those rows of the whole weight (ranges that start and end inside blocks,
// nested absmax, the partial last block), and the sliced forward/backward equal a dense linear on
// the whole weight within float rounding for every slice bound, the one-shot path exactly.
#include "core/error.h"
#include "quant/dequantize_rows.h"
#include "quant/frozen_linear.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <utility>
#include <vector>

namespace qtrain {
namespace {

// Every row range [b, e) of an [out, in] weight, the empty ones included.
std::vector<std::pair<int64_t, int64_t>> all_ranges(int64_t out) {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (int64_t b = 0; b <= out; ++b) {
    for (int64_t e = b; e <= out; ++e) ranges.emplace_back(b, e);
  }
  return ranges;
}

TEST(DequantizeRowsTest, EveryRowRangeOfABlockwiseWeightIsThoseRowsOfTheWholeWeight) {
  at::manual_seed(0);
  // in = 40 with blocks of 64: most row ranges start and end inside a block; 7 x 40 = 280
  // elements end in a partial block. in = 128: blocks inside rows.
  const std::vector<QuantConfig> configs = {
      {QuantType::kNF4, 64, false},  {QuantType::kNF4, 64, true},   {QuantType::kFP4, 32, true},
      {QuantType::kFP4, 128, false}, {QuantType::kInt8, 64, false}, {QuantType::kInt8, 256, false}};
  for (const QuantConfig& config : configs) {
    for (const auto& [out, in] : std::vector<std::pair<int64_t, int64_t>>{{7, 40}, {5, 128}}) {
      SCOPED_TRACE(quant_type_name(config.type) + " blocksize " + std::to_string(config.blocksize) +
                   (config.double_quant ? " nested" : "") + " [" + std::to_string(out) + ", " +
                   std::to_string(in) + "]");
      const QuantizedTensor q = quantize(at::randn({out, in}), config);
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
        const at::Tensor whole = q.dequantize(dtype);
        for (const auto& [b, e] : all_ranges(out)) {
          const at::Tensor rows = dequantize_rows(q, b, e, dtype);
          ASSERT_EQ(rows.sizes(), (std::vector<int64_t>{e - b, in})) << b << ".." << e;
          EXPECT_TRUE(at::equal(rows, whole.narrow(0, b, e - b))) << b << ".." << e;
        }
      }
    }
  }
}

TEST(DequantizeRowsTest, NestedAbsmaxRangesCrossNestedBlocks) {
  // 600 blocks of 32: the nested absmax has blocks of 256, so row ranges cross nested blocks.
  at::manual_seed(1);
  const QuantizedTensor q = quantize(at::randn({150, 128}), {QuantType::kNF4, 32, true});
  const at::Tensor whole = q.dequantize(at::kFloat);
  for (const auto& [b, e] : std::vector<std::pair<int64_t, int64_t>>{
           {0, 64}, {63, 65}, {64, 128}, {1, 149}, {127, 150}, {149, 150}}) {
    EXPECT_TRUE(at::equal(dequantize_rows(q, b, e, at::kFloat), whole.narrow(0, b, e - b)))
        << b << ".." << e;
  }
}

TEST(DequantizeRowsTest, EveryRowRangeOfAnInt4WeightIsThoseRowsOfTheWholeWeight) {
  at::manual_seed(2);
  Int4GroupTensor q = quantize_int4_group(at::randn({6, 64}), 32);
  q.zeros.add_(0.25);  // fractional zeros, as after a QA-LoRA merge
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kDouble}) {
    const at::Tensor whole = q.dequantize(dtype);
    for (const auto& [b, e] : all_ranges(6)) {
      EXPECT_TRUE(at::equal(dequantize_rows(q, b, e, dtype), whole.narrow(0, b, e - b)))
          << b << ".." << e;
    }
  }
}

TEST(DequantizeRowsTest, RangesOutsideTheWeightAreShapeErrors) {
  const QuantizedTensor q = quantize(at::randn({4, 64}), {});
  const Int4GroupTensor g = quantize_int4_group(at::randn({4, 64}), 32);
  for (const auto& [b, e] : std::vector<std::pair<int64_t, int64_t>>{{-1, 2}, {3, 2}, {0, 5}}) {
    EXPECT_THROW(dequantize_rows(q, b, e, at::kFloat), Error);
    EXPECT_THROW(dequantize_rows(g, b, e, at::kFloat), Error);
  }
}

// A FrozenWeight over a dense [out, in] weight that records the largest slice it handed out.
struct RecordingWeight {
  at::Tensor dense;
  std::shared_ptr<int64_t> largest = std::make_shared<int64_t>(0);

  FrozenWeight frozen(int64_t max_slice_elements) const {
    return {[dense = dense, largest = largest](int64_t b, int64_t e, at::ScalarType dtype) {
              *largest = std::max(*largest, (e - b) * dense.size(1));
              return dense.narrow(0, b, e - b).to(dtype);
            },
            dense.size(0), dense.size(1), max_slice_elements};
  }
};

TEST(FrozenLinearTest, SlicedForwardAndGradInputEqualTheDenseLinear) {
  at::manual_seed(3);
  const int64_t out = 11, in = 6;
  const RecordingWeight weight{at::randn({out, in}, at::kDouble)};
  const at::Tensor bias = at::randn({out}, at::kDouble);
  // 1 element: one row per slice; 18: 3 rows (the last slice 2); 65: 10 rows then 1; 66: whole.
  for (int64_t bound : {int64_t{1}, int64_t{18}, int64_t{65}, out * in, kFrozenSliceElements}) {
    SCOPED_TRACE("bound " + std::to_string(bound));
    *weight.largest = 0;
    const at::Tensor x = at::randn({2, 3, in}, at::kDouble).requires_grad_(true);
    const at::Tensor y = frozen_linear(x, weight.frozen(bound), bias);
    const at::Tensor x_ref = x.detach().clone().requires_grad_(true);
    const at::Tensor y_ref = at::linear(x_ref, weight.dense, bias);
    ASSERT_EQ(y.sizes(), y_ref.sizes());
    EXPECT_TRUE(at::allclose(y, y_ref, 1e-12, 1e-12));
    const at::Tensor upstream = at::randn(y.sizes(), at::kDouble);
    const at::Tensor grad = torch::autograd::grad({y}, {x}, {upstream})[0];
    const at::Tensor grad_ref = torch::autograd::grad({y_ref}, {x_ref}, {upstream})[0];
    EXPECT_TRUE(at::allclose(grad, grad_ref, 1e-12, 1e-12));
    // No slice larger than the bound (one row at least), the whole weight at or under it.
    EXPECT_EQ(*weight.largest, bound >= out * in ? out * in : std::max(in, bound / in * in));
  }
}

TEST(FrozenLinearTest, SlicedBfloat16MatchesTheOneShotPathWithinRounding) {
  at::manual_seed(4);
  const RecordingWeight weight{at::randn({40, 32})};
  const at::Tensor x = at::randn({4, 32}, at::kBFloat16).requires_grad_(true);
  const at::Tensor x_sliced = x.detach().clone().requires_grad_(true);
  const at::Tensor y = frozen_linear(x, weight.frozen(kFrozenSliceElements), {});
  const at::Tensor y_sliced = frozen_linear(x_sliced, weight.frozen(32 * 7), {});
  EXPECT_TRUE(at::allclose(y_sliced.to(at::kFloat), y.to(at::kFloat), 2e-2, 2e-2));
  const at::Tensor upstream = at::randn(y.sizes(), at::kBFloat16);
  y.backward(upstream);
  y_sliced.backward(upstream);
  EXPECT_TRUE(at::allclose(x_sliced.grad().to(at::kFloat), x.grad().to(at::kFloat), 3e-2, 3e-2));
}

TEST(FrozenLinearTest, OneShotPathIsTheDenseWeightFnPathExactly) {
  at::manual_seed(5);
  const at::Tensor dense = at::randn({9, 16});
  const at::Tensor x = at::randn({5, 16}).requires_grad_(true);
  const at::Tensor x2 = x.detach().clone().requires_grad_(true);
  const at::Tensor y = frozen_linear(
      x,
      FrozenWeight{[&](int64_t b, int64_t e, at::ScalarType) { return dense.narrow(0, b, e - b); },
                   9, 16},
      {});
  const at::Tensor y2 = frozen_linear(x2, DenseWeightFn([&](at::ScalarType) { return dense; }), {});
  EXPECT_TRUE(at::equal(y, y2));
  const at::Tensor upstream = at::randn({5, 9});
  y.backward(upstream);
  y2.backward(upstream);
  EXPECT_TRUE(at::equal(x.grad(), x2.grad()));
}

TEST(FrozenLinearTest, WrongInputWidthIsAShapeError) {
  const RecordingWeight weight{at::randn({4, 8})};
  try {
    frozen_linear(at::randn({2, 7}), weight.frozen(4), {});
    ADD_FAILURE() << "accepted 7 features for 8";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kShape);
  }
}

}  // namespace
}  // namespace qtrain

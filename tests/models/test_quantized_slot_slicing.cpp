// The quantized base slots dequantize large weights in row slices: for every quantization kind
// (NF4/FP4 blockwise with and without nested absmax, INT8, group-wise INT4) a slot with a tiny
// slice bound gives the forward output and grad_input of the same slot dequantizing whole within
// float rounding, and under the bound the slot computes exactly what quantized_linear /
// int4_group_linear compute. On CUDA the same holds for the kernels' dequantization.
#include "models/int4_linear_slot.h"
#include "models/quantized_linear_slot.h"
#include "quant/int4_group.h"
#include "quant/quantized_linear.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>

#include <memory>
#include <string>
#include <vector>

namespace qtrain {
namespace {

// A slot holding `weight` [out, in] in the kind `kind` names, with `bias` [out].
std::shared_ptr<LinearSlot> make_slot(const std::string& kind, const at::Tensor& weight,
                                      const at::Tensor& bias, int64_t max_slice_elements) {
  if (kind == "int4") {
    auto slot = std::make_shared<Int4LinearSlot>(quantize_int4_group(weight, 32), bias);
    slot->set_max_slice_elements(max_slice_elements);
    return slot;
  }
  QuantConfig config;
  if (kind == "nf4") config = {QuantType::kNF4, 64, false};
  if (kind == "nf4-nested") config = {QuantType::kNF4, 32, true};
  if (kind == "fp4") config = {QuantType::kFP4, 128, true};
  if (kind == "int8") config = {QuantType::kInt8, 64, false};
  auto slot = std::make_shared<QuantizedLinearSlot>(quantize(weight, config), bias);
  slot->set_max_slice_elements(max_slice_elements);
  return slot;
}

const std::vector<std::string> kKinds = {"nf4", "nf4-nested", "fp4", "int8", "int4"};

// (y, grad_x) of `slot` on x with upstream gradient `upstream`.
std::pair<at::Tensor, at::Tensor> forward_backward(LinearSlot& slot, const at::Tensor& x,
                                                   const at::Tensor& upstream) {
  const at::Tensor input = x.detach().clone().requires_grad_(true);
  const at::Tensor y = slot.forward(input);
  return {y.detach(), torch::autograd::grad({y}, {input}, {upstream})[0]};
}

void expect_sliced_equals_whole(const c10::Device& device) {
  // in = 96: blocks of 32/64/128 start inside rows; out = 13 rows, sliced 2 rows (192 elements)
  // or 1 row at a time.
  for (const std::string& kind : kKinds) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      for (int64_t bound : {int64_t{96 * 2}, int64_t{1}}) {
        SCOPED_TRACE(kind + " " + c10::toString(dtype) + " bound " + std::to_string(bound));
        at::manual_seed(7);
        const at::Tensor weight = at::randn({13, 96}).to(device);
        const at::Tensor bias = at::randn({13}).to(dtype).to(device);
        auto whole = make_slot(kind, weight, bias, kFrozenSliceElements);
        auto sliced = make_slot(kind, weight, bias, bound);
        const at::Tensor x = at::randn({2, 5, 96}).to(dtype).to(device);
        const at::Tensor upstream = at::randn({2, 5, 13}).to(dtype).to(device);
        const auto [y, grad] = forward_backward(*whole, x, upstream);
        const auto [y_sliced, grad_sliced] = forward_backward(*sliced, x, upstream);
        ASSERT_EQ(y_sliced.sizes(), y.sizes());
        ASSERT_EQ(grad_sliced.sizes(), x.sizes());
        // Forward: one rounding per output either way. Backward: bf16 rounds the running sum once
        // per slice (13 slices at bound 1), a few units in the last place of the largest entry.
        const double tol = dtype == at::kFloat ? 1e-5 : 3e-2;
        const double grad_tol = tol * grad.abs().max().item<double>();
        EXPECT_TRUE(at::allclose(y_sliced.to(at::kFloat), y.to(at::kFloat), tol, tol));
        EXPECT_LE((grad_sliced.to(at::kFloat) - grad.to(at::kFloat)).abs().max().item<double>(),
                  grad_tol);
        // A slice landing on the wrong rows would be far outside the tolerances.
        EXPECT_GT((y.to(at::kFloat) - y.to(at::kFloat).roll(1, -1)).abs().max().item<double>(),
                  10 * tol);
        EXPECT_GT(
            (grad.to(at::kFloat) - grad.to(at::kFloat).roll(1, -1)).abs().max().item<double>(),
            10 * grad_tol);
      }
    }
  }
}

TEST(QuantizedSlotSlicingTest, SlicedEqualsWholeForEveryKindOnCpu) {
  expect_sliced_equals_whole(c10::kCPU);
}

TEST(QuantizedSlotSlicingTest, SlicedEqualsWholeForEveryKindOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  expect_sliced_equals_whole(c10::Device(c10::kCUDA, 0));
}

TEST(QuantizedSlotSlicingTest, SlicedFloat64MatchesTheDequantizedDenseLinear) {
  // float64 (gradient checks): the sliced slot against autograd through a dense copy.
  for (const std::string& kind : kKinds) {
    SCOPED_TRACE(kind);
    at::manual_seed(8);
    const at::Tensor weight = at::randn({9, 64});
    auto slot = make_slot(kind, weight, at::Tensor(), 64 * 4);
    at::Tensor dense;
    if (auto q = std::dynamic_pointer_cast<QuantizedLinearSlot>(slot)) {
      dense = q->weight().dequantize(at::kFloat).to(at::kDouble);
    } else {
      dense = std::dynamic_pointer_cast<Int4LinearSlot>(slot)->weight().dequantize(at::kDouble);
    }
    const at::Tensor x = at::randn({3, 64}, at::kDouble);
    const at::Tensor upstream = at::randn({3, 9}, at::kDouble);
    const auto [y, grad] = forward_backward(*slot, x, upstream);
    EXPECT_TRUE(at::allclose(y, at::linear(x, dense), 1e-12, 1e-12));
    EXPECT_TRUE(at::allclose(grad, at::matmul(upstream, dense), 1e-12, 1e-12));
  }
}

TEST(QuantizedSlotSlicingTest, UnderTheBoundTheSlotComputesWhatTheWholeWeightLinearDoes) {
  at::manual_seed(9);
  const at::Tensor weight = at::randn({12, 64});
  const at::Tensor bias = at::randn({12});
  const at::Tensor x = at::randn({4, 64});
  const at::Tensor upstream = at::randn({4, 12});
  {
    QuantizedLinearSlot slot(quantize(weight, {}), bias);
    auto shared = std::make_shared<const QuantizedTensor>(slot.weight());
    const at::Tensor input = x.clone().requires_grad_(true);
    const at::Tensor y = quantized_linear(input, shared, bias);
    const at::Tensor grad = torch::autograd::grad({y}, {input}, {upstream})[0];
    const auto [y_slot, grad_slot] = forward_backward(slot, x, upstream);
    EXPECT_TRUE(at::equal(y_slot, y.detach()));
    EXPECT_TRUE(at::equal(grad_slot, grad));
  }
  {
    Int4LinearSlot slot(quantize_int4_group(weight, 32), bias);
    auto shared = std::make_shared<const Int4GroupTensor>(slot.weight());
    const at::Tensor input = x.clone().requires_grad_(true);
    const at::Tensor y = int4_group_linear(input, shared, bias);
    const at::Tensor grad = torch::autograd::grad({y}, {input}, {upstream})[0];
    const auto [y_slot, grad_slot] = forward_backward(slot, x, upstream);
    EXPECT_TRUE(at::equal(y_slot, y.detach()));
    EXPECT_TRUE(at::equal(grad_slot, grad));
  }
}

TEST(QuantizedSlotSlicingTest, AMergeThatShiftsInt4ZerosReachesTheSlicedPath) {
  // The slices read the slot's weight at call time, like the whole-weight path.
  at::manual_seed(10);
  Int4LinearSlot slot(quantize_int4_group(at::randn({6, 32}), 32), at::Tensor());
  slot.set_max_slice_elements(32);
  const at::Tensor x = at::randn({2, 32});
  const at::Tensor before = slot.forward(x).detach();
  slot.mutable_weight().zeros.add_(0.5);
  const at::Tensor after = slot.forward(x).detach();
  const at::Tensor expected = at::linear(x, slot.weight().dequantize(at::kFloat));
  EXPECT_TRUE(at::allclose(after, expected, 1e-5, 1e-5));
  EXPECT_FALSE(at::allclose(after, before, 1e-3, 1e-3));
}

}  // namespace
}  // namespace qtrain

// The frozen quantized linear: forward equals a dense linear on the dequantized weight, the
// backward pass gives exactly autograd's grad_input for that dense weight (float64), and no
// weight gradient exists anywhere.
#include "quant/quantized_linear.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

namespace qtrain {
namespace {

struct Case {
  QuantConfig config;
  bool bias;
};

TEST(QuantizedLinearTest, ForwardAndGradInputMatchTheDequantizedDenseLinear) {
  at::manual_seed(0);
  const std::vector<Case> cases = {
      {{QuantType::kNF4, 64, false}, false},
      {{QuantType::kNF4, 64, true}, true},
      {{QuantType::kFP4, 128, false}, true},
      {{QuantType::kInt8, 64, false}, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(quant_type_name(c.config.type));
    at::Tensor w = at::randn({24, 40});
    auto q = std::make_shared<const QuantizedTensor>(quantize(w, c.config));
    at::Tensor dense = q->dequantize(at::kFloat).to(at::kDouble);
    at::Tensor bias = c.bias ? at::randn({24}, at::kDouble).requires_grad_(true) : at::Tensor();
    at::Tensor x = at::randn({3, 5, 40}, at::kDouble).requires_grad_(true);
    at::Tensor y = quantized_linear(x, q, bias);
    at::Tensor reference =
        at::linear(x, dense, bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt);
    EXPECT_TRUE(at::allclose(y, reference, 1e-12, 1e-12));

    at::Tensor upstream = at::randn(y.sizes(), at::kDouble);
    auto grads = torch::autograd::grad(
        {y}, c.bias ? std::vector<at::Tensor>{x, bias} : std::vector<at::Tensor>{x}, {upstream});
    at::Tensor x2 = x.detach().clone().requires_grad_(true);
    at::Tensor b2 = c.bias ? bias.detach().clone().requires_grad_(true) : at::Tensor();
    at::Tensor y2 =
        at::linear(x2, dense, b2.defined() ? c10::optional<at::Tensor>(b2) : c10::nullopt);
    auto expected = torch::autograd::grad(
        {y2}, c.bias ? std::vector<at::Tensor>{x2, b2} : std::vector<at::Tensor>{x2}, {upstream});
    EXPECT_TRUE(at::allclose(grads[0], expected[0], 1e-12, 1e-12)) << "grad_input";
    if (c.bias) EXPECT_TRUE(at::allclose(grads[1], expected[1], 1e-12, 1e-12)) << "grad_bias";
    // The quantized storage never takes part in autograd.
    EXPECT_FALSE(q->data.requires_grad());
    EXPECT_FALSE(q->data.grad().defined());
  }
}

TEST(QuantizedLinearTest, BackwardDoesNotNeedTheInputValues) {
  // grad_input = grad_out @ W: independent of x, so the graph keeps no copy of the input.
  at::manual_seed(1);
  auto q = std::make_shared<const QuantizedTensor>(quantize(at::randn({8, 64}), {}));
  at::Tensor x1 = at::randn({2, 64}).requires_grad_(true);
  at::Tensor x2 = at::randn({2, 64}).requires_grad_(true);
  at::Tensor g = at::randn({2, 8});
  quantized_linear(x1, q, {}).backward(g);
  quantized_linear(x2, q, {}).backward(g);
  EXPECT_TRUE(at::equal(x1.grad(), x2.grad()));
}

TEST(QuantizedLinearTest, WrongInputWidthIsAShapeError) {
  auto q = std::make_shared<const QuantizedTensor>(quantize(at::randn({8, 64}), {}));
  EXPECT_THROW(quantized_linear(at::randn({2, 63}), q, {}), std::exception);
}

}  // namespace
}  // namespace qtrain

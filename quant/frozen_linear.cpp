#include "quant/frozen_linear.h"

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/custom_function.h>

#include <utility>

namespace qtrain {
namespace {

// Keeps the weight (through the function that dequantizes it) reachable from the autograd graph
// without copying it.
struct DenseWeightHolder : torch::CustomClassHolder {
  explicit DenseWeightHolder(DenseWeightFn fn) : dense_weight(std::move(fn)) {}
  DenseWeightFn dense_weight;
};

class FrozenLinearFunction : public torch::autograd::Function<FrozenLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<DenseWeightHolder> holder) {
    at::Tensor w = holder->dense_weight(x.scalar_type());  // [out, in]
    ctx->saved_data["weight"] = at::IValue::make_capsule(holder);
    return at::linear(x, w);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor& grad_out = grads[0];  // [..., out]
    auto holder = c10::static_intrusive_pointer_cast<DenseWeightHolder>(
        ctx->saved_data["weight"].toCapsule());
    at::Tensor w = holder->dense_weight(grad_out.scalar_type());  // [out, in]
    at::Tensor grad_x = at::matmul(grad_out, w);                  // [..., in]
    return {grad_x, at::Tensor()};
  }
};

}  // namespace

at::Tensor frozen_linear(const at::Tensor& x, DenseWeightFn dense_weight, const at::Tensor& bias) {
  auto holder = c10::make_intrusive<DenseWeightHolder>(std::move(dense_weight));
  at::Tensor y = FrozenLinearFunction::apply(x, holder);
  // The bias stays outside the Function: autograd's own add handles a trainable bias, and
  // apply() cannot take an undefined tensor.
  return bias.defined() ? y + bias.to(y.scalar_type()) : y;
}

}  // namespace qtrain

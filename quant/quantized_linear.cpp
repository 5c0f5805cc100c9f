#include "quant/quantized_linear.h"

#include "core/error.h"

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/custom_function.h>

namespace qtrain {
namespace {

// Keeps the quantized weight reachable from the autograd graph without copying it.
struct WeightHolder : torch::CustomClassHolder {
  explicit WeightHolder(std::shared_ptr<const QuantizedTensor> w) : weight(std::move(w)) {}
  std::shared_ptr<const QuantizedTensor> weight;
};

// W [out, in] in `dtype`; float64 (gradient checks) goes through float32.
at::Tensor dense_weight(const QuantizedTensor& w, at::ScalarType dtype) {
  if (dtype == at::kDouble) return w.dequantize(at::kFloat).to(at::kDouble);
  return w.dequantize(dtype);
}

class QuantizedLinearFunction : public torch::autograd::Function<QuantizedLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<WeightHolder> holder) {
    at::Tensor w = dense_weight(*holder->weight, x.scalar_type());
    ctx->saved_data["weight"] = at::IValue::make_capsule(holder);
    return at::linear(x, w);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor& grad_out = grads[0];  // [..., out]
    auto holder =
        c10::static_intrusive_pointer_cast<WeightHolder>(ctx->saved_data["weight"].toCapsule());
    at::Tensor w = dense_weight(*holder->weight, grad_out.scalar_type());  // [out, in]
    at::Tensor grad_x = at::matmul(grad_out, w);                           // [..., in]
    return {grad_x, at::Tensor()};
  }
};

}  // namespace

at::Tensor quantized_linear(const at::Tensor& x, std::shared_ptr<const QuantizedTensor> weight,
                            const at::Tensor& bias) {
  if (weight->shape.size() != 2 || x.size(-1) != weight->shape[1]) {
    throw_error(ErrorKind::kShape,
                "input has " + std::to_string(x.size(-1)) +
                    " features, the quantized weight expects " +
                    std::to_string(weight->shape.size() == 2 ? weight->shape[1] : -1));
  }
  auto holder = c10::make_intrusive<WeightHolder>(std::move(weight));
  at::Tensor y = QuantizedLinearFunction::apply(x, holder);
  // The bias stays outside the Function: autograd's own add handles a trainable bias, and
  // apply() cannot take an undefined tensor.
  return bias.defined() ? y + bias.to(y.scalar_type()) : y;
}

}  // namespace qtrain

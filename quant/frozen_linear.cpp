#include "quant/frozen_linear.h"

#include "core/error.h"

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <string>
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

struct FrozenWeightHolder : torch::CustomClassHolder {
  explicit FrozenWeightHolder(FrozenWeight w) : weight(std::move(w)) {}
  FrozenWeight weight;

  bool sliced() const {
    return weight.out_features * weight.in_features > weight.max_slice_elements;
  }
  int64_t rows_per_slice() const {
    return std::max<int64_t>(1,
                             weight.max_slice_elements / std::max<int64_t>(1, weight.in_features));
  }
};

// `sizes` with its last dimension replaced by `last`.
std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> out = sizes.vec();
  out.back() = last;
  return out;
}

class SlicedFrozenLinearFunction : public torch::autograd::Function<SlicedFrozenLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<FrozenWeightHolder> holder) {
    ctx->saved_data["weight"] = at::IValue::make_capsule(holder);
    const FrozenWeight& weight = holder->weight;
    const at::ScalarType dtype = x.scalar_type();
    if (!holder->sliced()) {
      return at::linear(x, weight.rows(0, weight.out_features, dtype));
    }
    const at::Tensor x2 = x.reshape({-1, weight.in_features});                 // [m, in]
    at::Tensor y = at::empty({x2.size(0), weight.out_features}, x.options());  // [m, out]
    const int64_t step = holder->rows_per_slice();
    for (int64_t begin = 0; begin < weight.out_features; begin += step) {
      const int64_t count = std::min(step, weight.out_features - begin);
      const at::Tensor w = weight.rows(begin, begin + count, dtype);  // [count, in]
      // The output slice is a strided [m, count] view (row stride out): BLAS writes it in place.
      at::Tensor y_rows = y.narrow(1, begin, count);
      at::mm_out(y_rows, x2, w.t());
    }
    return y.view(with_last(x.sizes(), weight.out_features));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor& grad_out = grads[0];  // [..., out]
    auto holder = c10::static_intrusive_pointer_cast<FrozenWeightHolder>(
        ctx->saved_data["weight"].toCapsule());
    const FrozenWeight& weight = holder->weight;
    const at::ScalarType dtype = grad_out.scalar_type();
    if (!holder->sliced()) {
      return {at::matmul(grad_out, weight.rows(0, weight.out_features, dtype)), at::Tensor()};
    }
    const at::Tensor g2 = grad_out.reshape({-1, weight.out_features});  // [m, out]
    at::Tensor grad_x = at::empty({g2.size(0), weight.in_features}, grad_out.options());  // [m, in]
    const int64_t step = holder->rows_per_slice();
    for (int64_t begin = 0; begin < weight.out_features; begin += step) {
      const int64_t count = std::min(step, weight.out_features - begin);
      const at::Tensor w = weight.rows(begin, begin + count, dtype);  // [count, in]
      const at::Tensor g_rows = g2.narrow(1, begin, count);           // [m, count]
      if (begin == 0) {
        at::mm_out(grad_x, g_rows, w);
      } else {
        grad_x.addmm_(g_rows, w);
      }
    }
    return {grad_x.view(with_last(grad_out.sizes(), weight.in_features)), at::Tensor()};
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

at::Tensor frozen_linear(const at::Tensor& x, FrozenWeight weight, const at::Tensor& bias) {
  if (x.dim() == 0 || x.size(-1) != weight.in_features) {
    throw_error(ErrorKind::kShape, "input has " + std::to_string(x.dim() ? x.size(-1) : 0) +
                                       " features, the frozen weight expects " +
                                       std::to_string(weight.in_features));
  }
  auto holder = c10::make_intrusive<FrozenWeightHolder>(std::move(weight));
  at::Tensor y = SlicedFrozenLinearFunction::apply(x, holder);
  return bias.defined() ? y + bias.to(y.scalar_type()) : y;
}

}  // namespace qtrain

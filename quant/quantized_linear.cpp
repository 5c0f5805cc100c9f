#include "quant/quantized_linear.h"

#include "core/error.h"
#include "quant/frozen_linear.h"

#include <ATen/ATen.h>

#include <utility>

namespace qtrain {
namespace {

// W [out, in] in `dtype`; float64 (gradient checks) goes through float32.
at::Tensor dense_weight(const QuantizedTensor& w, at::ScalarType dtype) {
  if (dtype == at::kDouble) return w.dequantize(at::kFloat).to(at::kDouble);
  return w.dequantize(dtype);
}

}  // namespace

at::Tensor quantized_linear(const at::Tensor& x, std::shared_ptr<const QuantizedTensor> weight,
                            const at::Tensor& bias) {
  if (weight->shape.size() != 2 || x.size(-1) != weight->shape[1]) {
    throw_error(ErrorKind::kShape,
                "input has " + std::to_string(x.size(-1)) +
                    " features, the quantized weight expects " +
                    std::to_string(weight->shape.size() == 2 ? weight->shape[1] : -1));
  }
  return frozen_linear(
      x,
      [weight = std::move(weight)](at::ScalarType dtype) { return dense_weight(*weight, dtype); },
      bias);
}

}  // namespace qtrain

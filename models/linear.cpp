#include "models/linear.h"

#include <ATen/ATen.h>

namespace qtrain {

DenseLinear::DenseLinear(int64_t in_features, int64_t out_features, bool bias,
                         const at::TensorOptions& options) {
  weight_ = register_parameter("weight", at::empty({out_features, in_features}, options));
  if (bias) bias_ = register_parameter("bias", at::empty({out_features}, options));
}

DenseLinear::DenseLinear(const at::Tensor& shared_weight) {
  weight_ = register_parameter("weight", shared_weight);
}

at::Tensor DenseLinear::forward(const at::Tensor& x) {
  return at::linear(x, weight_, bias_.defined() ? c10::optional<at::Tensor>(bias_) : c10::nullopt);
}

}  // namespace qtrain

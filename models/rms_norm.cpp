#include "models/rms_norm.h"

#include <ATen/ATen.h>

namespace qtrain {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto input_type = x.scalar_type();
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  x32 = x32 * at::rsqrt(variance + eps);
  return weight * x32.to(input_type);
}

RMSNorm::RMSNorm(int64_t dim, double eps, const at::TensorOptions& options) : eps_(eps) {
  weight_ = register_parameter("weight", at::ones({dim}, options));
}

}  // namespace qtrain

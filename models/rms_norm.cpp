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

at::Tensor unit_offset_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor x32 = x.to(at::kFloat);
  x32 = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (x32 * (weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
}

RMSNorm::RMSNorm(int64_t dim, double eps, const at::TensorOptions& options, bool unit_offset)
    : eps_(eps), unit_offset_(unit_offset) {
  weight_ = register_parameter("weight",
                               unit_offset ? at::zeros({dim}, options) : at::ones({dim}, options));
}

}  // namespace qtrain

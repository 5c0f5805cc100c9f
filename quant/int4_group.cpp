#include "quant/int4_group.h"

#include "core/error.h"
#include "core/shape_string.h"
#include "quant/frozen_linear.h"

#include <ATen/ATen.h>

#include <string>
#include <utility>

namespace qtrain {
namespace {

constexpr float kMaxCode = 15.0f;

int64_t tensor_bytes(const at::Tensor& t) {
  return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
}

// A 0-dim float32 tensor on `device`. Dividing by a tensor rather than a C++ number keeps the
// division true on CUDA too: ATen turns division by a CPU scalar into a multiplication by its
// reciprocal there, which can differ from GPTQ's (xmax - xmin) / maxq in the last bit.
at::Tensor scalar_on(float value, const c10::Device& device) {
  return at::full({}, value, at::TensorOptions().dtype(at::kFloat).device(device));
}

}  // namespace

bool is_supported_int4_group_size(int64_t group_size) {
  return group_size == 32 || group_size == 64 || group_size == 128;
}

int64_t Int4GroupTensor::nbytes() const {
  return tensor_bytes(codes) + tensor_bytes(scales) + tensor_bytes(zeros);
}

at::Tensor Int4GroupTensor::unpacked_codes() const {
  at::Tensor low = at::bitwise_and(codes, 0x0F);
  at::Tensor high = at::bitwise_right_shift(codes, 4);
  return at::stack({low, high}, /*dim=*/-1).reshape({shape[0], shape[1]});  // [out, in]
}

at::Tensor Int4GroupTensor::dequantize(at::ScalarType out_dtype) const {
  const int64_t out = shape[0], groups = num_groups();
  at::Tensor q = unpacked_codes().to(at::kFloat).view({out, groups, group_size});
  at::Tensor w = scales.unsqueeze(-1) * (q - zeros.unsqueeze(-1));  // [out, groups, g]
  return w.view({out, shape[1]}).to(out_dtype);
}

Int4GroupTensor Int4GroupTensor::to(const c10::Device& device) const {
  Int4GroupTensor moved = *this;
  moved.codes = codes.to(device);
  moved.scales = scales.to(device);
  moved.zeros = zeros.to(device);
  return moved;
}

Int4GroupTensor quantize_int4_group(const at::Tensor& weight, int64_t group_size) {
  if (!is_supported_int4_group_size(group_size)) {
    throw_error(ErrorKind::kConfig,
                "int4 group size must be 32, 64 or 128, got " + std::to_string(group_size),
                {.field = "group_size"});
  }
  if (weight.dim() != 2 || weight.size(1) % group_size != 0) {
    throw_error(ErrorKind::kShape, "int4 group quantization needs a 2-D weight [out, in] with in " +
                                       std::string("a multiple of the group size ") +
                                       std::to_string(group_size) + ", got " +
                                       shape_string(weight.sizes()));
  }
  if (!at::isFloatingType(weight.scalar_type())) {
    throw_error(ErrorKind::kShape, "int4 group quantization needs a floating-point weight");
  }
  const int64_t out = weight.size(0), in = weight.size(1), groups = in / group_size;
  const c10::Device device = weight.device();
  at::Tensor w = weight.to(at::kFloat).reshape({out, groups, group_size});

  at::Tensor xmin = std::get<0>(w.min(-1)).clamp_max(0.0);  // [out, groups]
  at::Tensor xmax = std::get<0>(w.max(-1)).clamp_min(0.0);
  at::Tensor both_zero = at::logical_and(xmin == 0, xmax == 0);
  xmin = at::where(both_zero, scalar_on(-1.0f, device), xmin);
  xmax = at::where(both_zero, scalar_on(1.0f, device), xmax);
  at::Tensor scale = (xmax - xmin) / scalar_on(kMaxCode, device);
  at::Tensor zero = at::round(at::neg(xmin) / scale);  // half to even, like torch.round
  at::Tensor q = at::clamp(at::round(w / scale.unsqueeze(-1)) + zero.unsqueeze(-1), 0.0, kMaxCode)
                     .to(at::kByte)
                     .view({out, in / 2, 2});

  Int4GroupTensor result;
  result.shape = {out, in};
  result.group_size = group_size;
  result.codes = at::bitwise_or(q.select(-1, 0), at::bitwise_left_shift(q.select(-1, 1), 4))
                     .contiguous();  // [out, in/2]
  result.scales = scale.contiguous();
  result.zeros = zero.contiguous();
  result.dtype = weight.scalar_type();
  return result;
}

at::Tensor int4_group_linear(const at::Tensor& x, std::shared_ptr<const Int4GroupTensor> weight,
                             const at::Tensor& bias) {
  if (weight->shape.size() != 2 || x.size(-1) != weight->shape[1]) {
    throw_error(ErrorKind::kShape,
                "input has " + std::to_string(x.size(-1)) + " features, the int4 weight expects " +
                    std::to_string(weight->shape.size() == 2 ? weight->shape[1] : -1));
  }
  // dequantize() computes in float32 for every dtype, float64 included (gradient checks).
  return frozen_linear(
      x, [weight = std::move(weight)](at::ScalarType dtype) { return weight->dequantize(dtype); },
      bias);
}

}  // namespace qtrain

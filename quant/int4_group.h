// Group-wise asymmetric INT4: the base format of QA-LoRA (GPTQ's round-to-nearest quantizer,
// formats.md §8). Every output row is cut into groups of `group_size` consecutive inputs; each
// (row, group) has its own float scale and zero point:
//
//   W[n, i] = scales[n, G] * (q[n, i] - zeros[n, G]),   G = i / group_size,   q in [0, 15].
//
// Zeros are integers straight after quantization; a QA-LoRA merge shifts them to fractional values
// (the adapter's delta is constant per (row, group), so it folds into the zero point and the codes
// never change). They are therefore kept as float32, unpacked.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace qtrain {

struct Int4GroupTensor {
  std::vector<int64_t> shape;  // [out, in]
  int64_t group_size = 32;
  at::Tensor codes;   // uint8 [out, in/2]: two codes per byte, low nibble = even input index
  at::Tensor scales;  // float32 [out, in/group_size]
  at::Tensor zeros;   // float32 [out, in/group_size]
  at::ScalarType dtype = at::kBFloat16;  // the original weight's dtype

  int64_t num_groups() const { return shape[1] / group_size; }
  c10::Device device() const { return codes.device(); }
  // Exact bytes of storage: codes + scales + zeros.
  int64_t nbytes() const;
  // uint8 [out, in], one code per element.
  at::Tensor unpacked_codes() const;
  // W [out, in] in `out_dtype`, computed in float32 then cast (float64 too, so a float64 forward
  // sees exactly the float32 weight).
  at::Tensor dequantize(at::ScalarType out_dtype = at::kBFloat16) const;
  Int4GroupTensor to(const c10::Device& device) const;
};

// The group sizes QA-LoRA and GPTQ checkpoints use.
bool is_supported_int4_group_size(int64_t group_size);  // 32, 64, 128

// GPTQ's asymmetric 4-bit RTN quantizer per (output row, group), in float32 like GPTQ:
//   xmin = min(min w, 0), xmax = max(max w, 0); both 0 -> (-1, +1);
//   scale = (xmax - xmin) / 15; zero = round(-xmin / scale); q = clamp(round(w / scale) + zero,
//   0, 15), rounding half to even.
// weight: [out, in], any float dtype, CPU or CUDA (the result lives on the same device).
// Throws Error(kConfig) for a group size other than 32/64/128, Error(kShape) naming the shape
// when the weight is not 2-D or `in` is not a multiple of the group size.
Int4GroupTensor quantize_int4_group(const at::Tensor& weight, int64_t group_size);

// y = x W^T + b with W a frozen Int4GroupTensor, dequantized on every call into x's dtype.
// x [..., in], bias [out] or undefined -> [..., out]. The backward pass returns grad_input only
// (plus grad_bias through autograd when the bias requires grad); no weight gradient exists.
// The weight is held by shared_ptr until the backward pass has run.
at::Tensor int4_group_linear(const at::Tensor& x, std::shared_ptr<const Int4GroupTensor> weight,
                             const at::Tensor& bias);

}  // namespace qtrain

#include "formats/gptq/gptq_layout.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

namespace qtrain {

at::Tensor pack_nibbles_int32(const at::Tensor& nibbles) {
  const at::Tensor shifts = at::arange(0, 32, 4, at::kLong);
  at::Tensor packed = at::bitwise_left_shift(nibbles.to(at::kLong), shifts).sum(-1);
  packed = at::where(packed >= (int64_t{1} << 31), packed - (int64_t{1} << 32), packed);
  return packed.to(at::kInt);
}

at::Tensor unpack_nibbles_int32(const at::Tensor& packed) {
  const at::Tensor bits = packed.to(at::kLong).bitwise_and(int64_t{0xFFFFFFFF});
  const at::Tensor shifts = at::arange(0, 32, 4, at::kLong);
  return at::bitwise_right_shift(bits.unsqueeze(-1), shifts).bitwise_and(0xF);
}

at::Tensor dequantize_gptq_projection(const GptqProjection& p) {
  const int64_t in = p.qweight.size(0) * 8, out = p.qweight.size(1);
  // qweight [in/8, out] -> codes [in, out]: input 8r+j is nibble j of row r.
  const at::Tensor codes = unpack_nibbles_int32(p.qweight).permute({0, 2, 1}).reshape({in, out});
  const at::Tensor zeros = unpack_nibbles_int32(p.qzeros).reshape({p.qzeros.size(0), out}) + 1;
  const at::Tensor g_idx = p.g_idx.to(at::kLong);
  const at::Tensor scales = p.scales.to(at::kFloat).index_select(0, g_idx);  // [in, out]
  const at::Tensor w =
      scales * (codes.to(at::kFloat) - zeros.index_select(0, g_idx).to(at::kFloat));
  return w.t().contiguous();
}

GptqProjection pack_gptq_projection(const at::Tensor& codes, const at::Tensor& zeros,
                                    const at::Tensor& scales, int64_t group_size) {
  const int64_t out = codes.size(0), in = codes.size(1);
  GptqProjection p;
  p.qweight = pack_nibbles_int32(codes.t().reshape({in / 8, 8, out}).permute({0, 2, 1}));
  p.qzeros = pack_nibbles_int32((zeros.t() - 1).reshape({in / group_size, out / 8, 8}));
  p.scales = scales.t().contiguous().to(at::kHalf);
  p.g_idx = at::arange(in, at::kInt).div(group_size, "floor");
  return p;
}

nlohmann::json gptq_quantize_config(int64_t group_size) {
  return {{"bits", 4},
          {"group_size", group_size},
          {"damp_percent", 0.01},
          {"desc_act", false},
          {"static_groups", false},
          {"sym", false},
          {"true_sequential", true},
          {"quant_method", "gptq"},
          {"checkpoint_format", "gptq"}};
}

}  // namespace qtrain

#include "export/qalora_q4_1.h"

#include "core/error.h"
#include "quant/ggml/q4_1.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace qtrain {

at::Tensor encode_qalora_q4_1(const QaLoraInt4Weight& w, Q4_1MergeStats* stats) {
  const int64_t g = w.base.group_size;
  if (g % kQK4_1 != 0) {
    throw_error(ErrorKind::kConfig,
                "Q4_1 holds a QA-LoRA merge exactly only when the group size is a multiple of 32, "
                "got " +
                    std::to_string(g),
                {.field = "quantization.group_size"});
  }
  const int64_t out = w.base.shape[0], in = w.base.shape[1], blocks = in / kQK4_1;
  const at::Tensor codes = w.base.unpacked_codes().contiguous();     // [out, in]
  const at::Tensor merged = w.merged().view({out, blocks, kQK4_1});  // float32
  const at::Tensor d = w.base.scales.repeat_interleave(g / kQK4_1, 1).to(at::kHalf).to(at::kFloat);
  const at::Tensor q = codes.to(at::kFloat).view({out, blocks, kQK4_1});
  // The offset that minimises the block's squared error for the stored d (then rounded itself).
  const at::Tensor m = (merged - d.unsqueeze(-1) * q).mean(-1).contiguous();  // [out, blocks]
  const at::Tensor d_c = d.contiguous();

  at::Tensor bytes = at::empty({out, blocks * static_cast<int64_t>(sizeof(BlockQ4_1))}, at::kByte);
  const uint8_t* code = codes.data_ptr<uint8_t>();
  const float* dp = d_c.data_ptr<float>();
  const float* mp = m.data_ptr<float>();
  uint8_t* dst = bytes.data_ptr<uint8_t>();
  for (int64_t b = 0; b < out * blocks; ++b) {
    const BlockQ4_1 block = q4_1_block_on_grid(dp[b], mp[b], code + b * kQK4_1);
    std::memcpy(dst + b * sizeof(block), &block, sizeof(block));
  }
  if (stats) {
    std::vector<float> decoded(static_cast<size_t>(out * in));
    dequantize_q4_1(dst, decoded.data(), out * in);
    const at::Tensor error =
        (at::from_blob(decoded.data(), {out, blocks, kQK4_1}, at::kFloat) - merged).abs();
    const at::Tensor block_max = std::get<0>(error.max(-1));  // [out, blocks]
    stats->blocks += out * blocks;
    stats->max_error = std::max(stats->max_error, block_max.max().item<double>());
    stats->max_error_in_steps =
        std::max(stats->max_error_in_steps, (block_max / d.clamp_min(1e-30)).max().item<double>());
  }
  return bytes;
}

}  // namespace qtrain

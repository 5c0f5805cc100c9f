// Bit-exact with ggml: compiled with -ffp-contract=off (quant/CMakeLists.txt). The scale d is
// computed in float32 and used unrounded; only the stored copy is fp16.
#include "quant/ggml/q8_0.h"

#include "quant/ggml/block_rows.h"
#include "quant/ggml/ggml_fp16.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qtrain {
namespace {

BlockQ8_0 q8_0_block(const float* x) {
  BlockQ8_0 block;
  float amax = 0.0f;
  for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127;
  const float id = d ? 1.0f / d : 0.0f;
  block.d = ggml_fp16_bits(d);
  for (int j = 0; j < kQK8_0; ++j) block.qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  return block;
}

}  // namespace

void quantize_q8_0(const float* x, uint8_t* out, int64_t n) {
  quantize_blocks<kQK8_0>(x, out, n, q8_0_block);
}

}  // namespace qtrain

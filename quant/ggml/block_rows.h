// What every ggml block quantizer in quant/ggml shares: a row of values cut into blocks, each
// encoded into its block struct and stored as the struct's bytes.
#pragma once

#include <cstdint>
#include <cstring>

namespace qtrain {

// `x`: n floats (n a multiple of kValues) -> n / kValues blocks `block_of(x + i * kValues)`
// stored one after another at `out` (any alignment: the bytes are copied).
template <int64_t kValues, typename BlockOf>
void quantize_blocks(const float* x, uint8_t* out, int64_t n, BlockOf block_of) {
  for (int64_t i = 0; i < n / kValues; ++i) {
    const auto block = block_of(x + i * kValues);
    std::memcpy(out + i * sizeof(block), &block, sizeof(block));
  }
}

}  // namespace qtrain

#include "quant/memory.h"

namespace qtrain {

double QuantizedBytes::bits_per_parameter(int64_t numel) const {
  return numel > 0 ? 8.0 * static_cast<double>(total()) / static_cast<double>(numel) : 0.0;
}

QuantizedBytes quantized_bytes(int64_t numel, const QuantConfig& config) {
  config.validate();
  constexpr int64_t kFloat = 4;
  constexpr int64_t kNestedBlocksize = 256;
  const int64_t blocks = (numel + config.blocksize - 1) / config.blocksize;
  QuantizedBytes bytes;
  if (config.type == QuantType::kInt8) {
    bytes.data = numel;
    bytes.scales = kFloat * blocks;
    return bytes;
  }
  bytes.data = (numel + 1) / 2;
  bytes.tables = 16 * kFloat;
  if (config.double_quant) {
    const int64_t nested_blocks = (blocks + kNestedBlocksize - 1) / kNestedBlocksize;
    bytes.scales = blocks + kFloat * nested_blocks + kFloat;
    bytes.tables += 256 * kFloat;
  } else {
    bytes.scales = kFloat * blocks;
  }
  return bytes;
}

}  // namespace qtrain

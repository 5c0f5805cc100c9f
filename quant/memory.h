// Exact storage of a quantized tensor, computed from its element count alone, so memory can be
// planned before anything is quantized. Equals QuantizedTensor::nbytes() for the same numel.
#pragma once

#include "quant/quantized_tensor.h"

#include <cstdint>

namespace qtrain {

struct QuantizedBytes {
  int64_t data = 0;    // codes: 4-bit packed (n+1)/2 bytes, or int8 n bytes
  int64_t scales = 0;  // absmax float32 per block; nested: uint8 per block + float32 per 256
                       // blocks + the float32 offset
  int64_t tables = 0;  // code tables: 4-bit quant_map (16 floats), nested map (256 floats)

  int64_t total() const { return data + scales + tables; }
  double bits_per_parameter(int64_t numel) const;  // 8 * total() / numel
};

// Throws Error(kConfig) for an invalid config (QuantConfig::validate).
QuantizedBytes quantized_bytes(int64_t numel, const QuantConfig& config);

}  // namespace qtrain

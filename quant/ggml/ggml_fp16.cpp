#include "quant/ggml/ggml_fp16.h"

#include <c10/util/Half.h>

#include <cstring>

namespace qtrain {

int ggml_nearest_int(float v) {
  const float shifted = v + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  return (bits & 0x007fffff) - 0x00400000;
}

uint16_t ggml_fp16_bits(float v) {
  return c10::Half(v).x;
}

float ggml_fp16_value(uint16_t bits) {
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

}  // namespace qtrain

// Memory figures for the progress line and the metrics: the device the model trains on.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

namespace qtrain {

struct MemoryUsage {
  int64_t current = 0;  // CUDA: bytes allocated by the caching allocator; CPU: resident set
  int64_t peak = 0;     // CUDA: peak allocated since start; CPU: peak resident set
};

MemoryUsage memory_usage(const c10::Device& device);

}  // namespace qtrain

// How much memory a device has in total, for refusing models and adapters that cannot fit before
// anything is allocated (the allocator's own failure names no setting).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace qtrain {

// CUDA: the GPU's total memory; CPU: the machine's physical memory. 0 when unknown.
int64_t device_memory_bytes(const c10::Device& device);

// "12.5 GiB" (one decimal).
std::string gib_text(double bytes);

}  // namespace qtrain

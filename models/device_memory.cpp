#include "models/device_memory.h"

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <cstdio>

namespace qtrain {

int64_t device_memory_bytes(const c10::Device& device) {
  if (device.is_cuda()) {
    const c10::DeviceIndex index = device.has_index() ? device.index() : 0;
    try {
      return static_cast<int64_t>(c10::getDeviceAllocator(c10::kCUDA)->getMemoryInfo(index).second);
    } catch (const c10::Error&) {
      return 0;  // no CUDA allocator in this process: nothing to compare against
    }
  }
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page_size > 0 ? static_cast<int64_t>(pages) * page_size : 0;
}

std::string gib_text(double bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f GiB", bytes / double(int64_t{1} << 30));
  return text;
}

}  // namespace qtrain

#include "trainer/memory_usage.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

#ifdef QTRAIN_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace qtrain {
namespace {

int64_t resident_bytes() {
  long pages_total = 0, pages_resident = 0;
  std::FILE* statm = std::fopen("/proc/self/statm", "r");
  if (statm == nullptr) return 0;
  if (std::fscanf(statm, "%ld %ld", &pages_total, &pages_resident) != 2) pages_resident = 0;
  std::fclose(statm);
  return static_cast<int64_t>(pages_resident) * ::sysconf(_SC_PAGESIZE);
}

}  // namespace

MemoryUsage memory_usage(const c10::Device& device) {
#ifdef QTRAIN_WITH_CUDA
  if (device.is_cuda()) {
    using c10::cuda::CUDACachingAllocator::getDeviceStats;
    const auto stats = getDeviceStats(device.index() < 0 ? 0 : device.index());
    const auto& all = stats.allocated_bytes[0];  // StatType::AGGREGATE
    return {all.current, all.peak};
  }
#endif
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  return {resident_bytes(), static_cast<int64_t>(usage.ru_maxrss) * 1024};
}

}  // namespace qtrain

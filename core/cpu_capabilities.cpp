#include "core/cpu_capabilities.h"

#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <mutex>
#include <set>
#include <string>
#include <thread>

namespace qtrain {

bool compiled_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int threads_used_by_parallel_for(int64_t iterations) {
  std::mutex mutex;
  std::set<std::thread::id> seen;
  at::parallel_for(0, iterations, 1, [&](int64_t begin, int64_t end) {
    // Enough work per chunk that every thread of the team gets to run one.
    volatile double sink = 0;
    for (int64_t i = begin; i < end; ++i) {
      for (int k = 0; k < 2000; ++k) sink = sink + static_cast<double>(i ^ k);
    }
    std::lock_guard<std::mutex> lock(mutex);
    seen.insert(std::this_thread::get_id());
  });
  return static_cast<int>(seen.size());
}

namespace {

#if defined(__x86_64__) || defined(__i386__)
uint64_t enabled_register_state() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

}  // namespace

std::string cpu_bf16_instructions() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return "";  // OSXSAVE
  const uint64_t xcr0 = enabled_register_state();
  const bool zmm = (xcr0 & 0xE6) == 0xE6;                    // SSE, AVX, opmask, ZMM state
  const bool tiles = (xcr0 & (3ull << 17)) == (3ull << 17);  // XTILECFG, XTILEDATA
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return "";
  const bool amx_bf16 = (edx & (1u << 22)) != 0;
  const bool avx512f = (ebx & (1u << 16)) != 0;
  unsigned eax1 = 0, ebx1 = 0, ecx1 = 0, edx1 = 0;
  const bool avx512_bf16 =
      __get_cpuid_count(7, 1, &eax1, &ebx1, &ecx1, &edx1) && (eax1 & (1u << 5)) != 0;
  if (amx_bf16 && tiles) return "AMX-BF16";
  if (avx512f && avx512_bf16 && zmm) return "AVX512-BF16";
#endif
  return "";
}

}  // namespace qtrain

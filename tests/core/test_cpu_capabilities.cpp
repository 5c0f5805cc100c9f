// qtrain's own at::parallel_for kernels run on more than one thread when asked: the project is
// compiled with OpenMP (without it ATen's header-only parallel_for silently runs serially, and
// quantize, dequantize, 8-bit AdamW and the GGUF quantizers use one core).
#include "core/cpu_capabilities.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <thread>

namespace qtrain {
namespace {

TEST(CpuThreads, ParallelForUsesTheThreadsItIsGiven) {
  EXPECT_TRUE(compiled_with_openmp());
  if (std::thread::hardware_concurrency() < 2) GTEST_SKIP() << "one CPU";
  const int before = at::get_num_threads();
  at::set_num_threads(2);
  EXPECT_EQ(threads_used_by_parallel_for(64), 2);
  at::set_num_threads(1);
  EXPECT_EQ(threads_used_by_parallel_for(64), 1);
  at::set_num_threads(before);
}

}  // namespace
}  // namespace qtrain

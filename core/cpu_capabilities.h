// What the CPU offers qtrain: threads for its own kernels, whose at::parallel_for loops run on
// OpenMP threads only because the project is compiled with OpenMP (CMakeLists.txt), and whether
// bfloat16 matmuls are fast (model.dtype auto).
#pragma once

#include <cstdint>
#include <string>

namespace qtrain {

// True when this library was compiled with OpenMP (_OPENMP defined).
bool compiled_with_openmp();

// The number of distinct threads one at::parallel_for over `iterations` (grain 1), compiled in
// this library, actually ran its body on: 1 when it runs serially.
int threads_used_by_parallel_for(int64_t iterations);

// The CPU's bfloat16 matrix instructions, from CPUID and the OS-enabled register state (XCR0):
// AMX-BF16 tiles, AVX512-BF16 (VDPBF16PS); "" when it has neither (bf16 then runs through
// float32 conversions, slower than float32 itself).
std::string cpu_bf16_instructions();

}  // namespace qtrain

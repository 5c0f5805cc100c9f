// Counts the bytes LibTorch's CPU allocator hands out, for tests that check memory estimates
// against measurement: while a CpuAllocationCounter lives, every CPU tensor allocation goes
// through a wrapper of the allocator that was installed before (c10::SetCPUAllocator) and is
// tallied until its storage is freed. Only tensor storage is seen: glibc allocations of LibTorch
// itself (autograd nodes, oneDNN scratch, OpenMP) and of our code are not.
//
// One counter at a time per process (constructing a second while one lives is Error(kInternal)).
// Storage allocated while a counter is installed is subtracted when it is freed, whenever that
// is; storage allocated before is never counted.
#pragma once

#include <cstdint>

namespace qtrain {

class CpuAllocationCounter {
 public:
  CpuAllocationCounter();   // installs the counting allocator
  ~CpuAllocationCounter();  // puts the previous allocator back
  CpuAllocationCounter(const CpuAllocationCounter&) = delete;
  CpuAllocationCounter& operator=(const CpuAllocationCounter&) = delete;

  // Bytes of live storage allocated through the counter (of any counter this process installed).
  int64_t current() const;
  // The largest `current` since construction or the last reset_peak().
  int64_t peak() const;
  // Starts a new peak from the current value.
  void reset_peak();
};

}  // namespace qtrain

// One optimizer step under LibTorch's Kineto profiler, for a kernel summary without nsys:
// QTRAIN_PROFILE_STEP=N profiles step N (1-based) of a run; the run directory then holds
// profile-step-N.txt (CPU operators by inclusive time and, on a GPU, CUDA kernels by device
// time, the top 30 of each) and profile-step-N.trace.json (a Chrome trace for Perfetto).
#pragma once

#include <cstdint>
#include <string>

namespace qtrain {

// The step QTRAIN_PROFILE_STEP names, or 0 when it is unset or empty. Throws Error(kConfig)
// naming the variable for anything but a positive integer.
int64_t requested_profile_step();

class StepProfiler {
 public:
  // Starts recording CPU operators, and CUDA kernels when `cuda`.
  explicit StepProfiler(bool cuda);
  ~StepProfiler();  // stops without writing if finish() was not reached
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  // Stops and writes <prefix>.txt and <prefix>.trace.json; returns the summary's path.
  std::string finish(const std::string& prefix, const std::string& title);

 private:
  bool cuda_;
  bool running_ = false;
};

}  // namespace qtrain

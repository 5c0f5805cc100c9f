// The live progress line: step, loss, learning rate, gradient norm, throughput, ETA, memory.
#pragma once

#include <cstdint>
#include <string>

namespace qtrain {

struct StepReport {
  int64_t step = 0;   // 1-based optimizer step just finished
  int64_t total = 0;  // steps of the run
  double loss = 0;
  double lr = 0;
  double grad_norm = 0;
  double tokens_per_second = 0;
  double seconds_per_step = 0;  // running mean over this process's steps
  int64_t memory_bytes = 0;
};

// "step 40/120 | loss 2.3456 | lr 1.60e-03 | gnorm 0.521 | 5.2k tok/s | 0.41 s/step |
//  ETA 0:33 | mem 210 MiB"
std::string format_progress(const StepReport& report);

// 0:05, 12:34, 3:02:01.
std::string format_duration(double seconds);
// 512 B, 1.2 KiB, 210 MiB, 3.41 GiB.
std::string format_bytes(int64_t bytes);

}  // namespace qtrain

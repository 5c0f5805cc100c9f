// The loss alone, forward + backward, at a 128k vocabulary (Llama 3's 128256) on 2048 tokens:
// the full path (lm_head over [1, T, H] -> [1, T, V] logits -> causal_lm_loss_sum) against the
// chunked one (trainer/chunked_loss.h) at a few chunk sizes. Counters: peak_MiB, the most memory
// one iteration held above what it started with: on the CPU the process's peak resident set
// (VmHWM, reset through /proc/self/clear_refs before each iteration; tensors this large are
// mmap'd and go back to the system when freed), on CUDA the caching allocator's peak allocated
// bytes. cpu_ms: the process's CPU time per iteration, every thread (steadier than wall time on a
// shared machine). lm_head is a frozen dense [V, H] (the usual QLoRA head); hidden requires grad.
//
//   build/tools/bench/bench_chunked_loss [--benchmark_filter=cpu] [--benchmark_filter=cuda]
#include "models/linear.h"
#include "trainer/causal_lm_loss.h"
#include "trainer/chunked_loss.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/cuda.h>

#ifdef QTRAIN_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <time.h>

#include <algorithm>
#include <fstream>
#include <string>

namespace qtrain {
namespace {

constexpr int64_t kVocab = 128256, kHidden = 256, kTokens = 2048;

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM").
int64_t status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  }
  return -1;
}

double process_cpu_ms() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) * 1e3 + static_cast<double>(now.tv_nsec) * 1e-6;
}

// Resets the peak and returns the current usage; peak() is then the most held since.
struct PeakMeter {
  c10::Device device;

  int64_t reset() const {
#ifdef QTRAIN_WITH_CUDA
    if (device.is_cuda()) {
      c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
      return stats.allocated_bytes[0].current;  // [0]: every pool together
    }
#endif
    std::ofstream("/proc/self/clear_refs") << "5";  // VmHWM := VmRSS
    return status_bytes("VmRSS");
  }

  int64_t peak() const {
#ifdef QTRAIN_WITH_CUDA
    if (device.is_cuda()) {
      return c10::cuda::CUDACachingAllocator::getDeviceStats(device.index())
          .allocated_bytes[0]
          .peak;
    }
#endif
    return status_bytes("VmHWM");
  }
};

// Argument chunk: loss tokens per chunk; -1 runs the full path instead.
void BM_LossForwardBackward(benchmark::State& state, c10::DeviceType device_type,
                            at::ScalarType dtype) {
  if (device_type == c10::kCUDA && !torch::cuda::is_available()) {
    state.SkipWithError("no CUDA GPU");
    return;
  }
  const int64_t chunk_tokens = state.range(0);
  const c10::Device device(device_type, device_type == c10::kCUDA ? 0 : -1);
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  at::manual_seed(0);
  DenseLinear head(kHidden, kVocab, false, options);
  {
    torch::NoGradGuard no_grad;
    head.weight().normal_(0, 0.05);
  }
  head.weight().set_requires_grad(false);
  const at::Tensor labels = at::randint(0, kVocab, {1, kTokens}, at::kLong);
  const at::Tensor device_labels = labels.to(device);
  const at::Tensor hidden = at::randn({1, kTokens, kHidden}, options).set_requires_grad(true);

  auto forward_backward = [&] {
    at::Tensor loss = chunk_tokens < 0
                          ? causal_lm_loss_sum(head.forward(hidden), device_labels)
                          : chunked_causal_lm_loss_sum(hidden, head, labels, chunk_tokens);
    loss.backward();
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  forward_backward();  // warm-up: BLAS handles, first touch of the allocator's pages
  const PeakMeter meter{device};
  int64_t peak = 0;
  double cpu_ms = 0;
  for (auto _ : state) {
    hidden.mutable_grad() = at::Tensor();
    const int64_t before = meter.reset();
    const double cpu_before = process_cpu_ms();
    forward_backward();
    cpu_ms += process_cpu_ms() - cpu_before;
    peak = std::max(peak, meter.peak() - before);
  }
  state.counters["cpu_ms"] = cpu_ms / static_cast<double>(state.iterations());
  state.counters["peak_MiB"] = static_cast<double>(peak) / (1 << 20);
  state.counters["logits_MiB"] = static_cast<double>(kTokens * kVocab * 4) / (1 << 20);
  state.counters["threads"] = at::get_num_threads();
}

void chunk_sizes(benchmark::internal::Benchmark* b) {
  b->ArgName("chunk")->Arg(-1)->Arg(0)->Arg(1024)->Arg(256);
  b->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
}

BENCHMARK_CAPTURE(BM_LossForwardBackward, cpu_f32, c10::kCPU, at::kFloat)->Apply(chunk_sizes);
BENCHMARK_CAPTURE(BM_LossForwardBackward, cuda_bf16, c10::kCUDA, at::kBFloat16)->Apply(chunk_sizes);
BENCHMARK_CAPTURE(BM_LossForwardBackward, cuda_f32, c10::kCUDA, at::kFloat)->Apply(chunk_sizes);

}  // namespace
}  // namespace qtrain

BENCHMARK_MAIN();

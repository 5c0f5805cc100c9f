#include "models/activation_offload.h"

#include "core/error.h"

#include <ATen/ATen.h>

#ifdef QTRAIN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <string>

namespace qtrain {
namespace {

int64_t bytes_of(const at::Tensor& t) {
  return t.numel() * static_cast<int64_t>(t.element_size());
}

[[noreturn]] void fetch_twice(int64_t index) {
  throw_error(ErrorKind::kInternal, "layer " + std::to_string(index) +
                                        "'s offloaded input fetched twice or never stored");
}

// The CPU stand-in: x is copied into memory of its own and the original dropped, as the CUDA
// path drops the device copy.
class HostCopyOffloader final : public ActivationOffloader {
 public:
  void offload(int64_t index, const at::Tensor& x) override {
    at::Tensor copy = at::empty_like(x, at::MemoryFormat::Contiguous);
    copy.copy_(x);
    count_host(bytes_of(copy));
    stored_[index] = std::move(copy);
  }

  at::Tensor fetch(int64_t index) override {
    auto found = stored_.find(index);
    if (found == stored_.end()) fetch_twice(index);
    at::Tensor x = std::move(found->second);
    stored_.erase(found);
    count_host(-bytes_of(x));
    return x;
  }

 private:
  std::map<int64_t, at::Tensor> stored_;
};

#ifdef QTRAIN_WITH_CUDA
class CudaOffloader final : public ActivationOffloader {
 public:
  explicit CudaOffloader(const c10::Device& device)
      : device_(device),
        side_(at::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {}

  void offload(int64_t index, const at::Tensor& x) override {
    c10::cuda::CUDAGuard guard(device_);
    const c10::cuda::CUDAStream compute = at::cuda::getCurrentCUDAStream(device_.index());
    Stored s;
    s.host = at::empty(x.sizes(), x.options().device(at::kCPU).pinned_memory(true));
    at::cuda::CUDAEvent produced;
    produced.record(compute);
    produced.block(side_);
    {
      c10::cuda::CUDAStreamGuard on_side(side_);
      s.host.copy_(x, /*non_blocking=*/true);
    }
    // x's block may be freed by the compute stream right after this call; the allocator must
    // not hand it out again before the side stream has read it.
    x.record_stream(side_);
    s.ready = std::make_shared<at::cuda::CUDAEvent>();
    s.ready->record(side_);
    count_host(bytes_of(s.host));
    stored_[index] = std::move(s);
  }

  at::Tensor fetch(int64_t index) override {
    c10::cuda::CUDAGuard guard(device_);
    const c10::cuda::CUDAStream compute = at::cuda::getCurrentCUDAStream(device_.index());
    auto found = stored_.find(index);
    if (found == stored_.end()) fetch_twice(index);
    if (!found->second.device.defined()) bring_back(found->second, compute);
    at::Tensor x = found->second.device;
    found->second.back->block(compute);
    count_host(-bytes_of(found->second.host));
    stored_.erase(found);
    // One layer ahead: layer index - 1's input travels while this layer recomputes.
    auto previous = stored_.find(index - 1);
    if (previous != stored_.end() && !previous->second.device.defined()) {
      bring_back(previous->second, compute);
    }
    return x;
  }

 private:
  struct Stored {
    at::Tensor host;    // pinned
    at::Tensor device;  // once the copy back is queued
    std::shared_ptr<at::cuda::CUDAEvent> ready, back;
  };

  // Queues host -> device on the side stream into a block of the compute stream.
  void bring_back(Stored& s, const c10::cuda::CUDAStream& compute) {
    s.device = at::empty(s.host.sizes(), s.host.options().device(device_).pinned_memory(false));
    at::cuda::CUDAEvent allocated;
    allocated.record(compute);
    allocated.block(side_);
    {
      c10::cuda::CUDAStreamGuard on_side(side_);
      s.device.copy_(s.host, /*non_blocking=*/true);
    }
    s.device.record_stream(side_);
    s.back = std::make_shared<at::cuda::CUDAEvent>();
    s.back->record(side_);
  }

  c10::Device device_;
  c10::cuda::CUDAStream side_;
  std::map<int64_t, Stored> stored_;
};
#endif

}  // namespace

void ActivationOffloader::count_host(int64_t delta) {
  host_bytes_ += delta;
  if (host_bytes_ > peak_host_bytes_) peak_host_bytes_ = host_bytes_;
}

std::shared_ptr<ActivationOffloader> ActivationOffloader::create(const c10::Device& device,
                                                                 bool simulate) {
#ifdef QTRAIN_WITH_CUDA
  if (device.is_cuda()) return std::make_shared<CudaOffloader>(device);
#endif
  if (simulate) return std::make_shared<HostCopyOffloader>();
  return nullptr;
}

}  // namespace qtrain

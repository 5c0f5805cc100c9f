// The micro-batch loop of a training step must never wait for the device: every value it needs on
// the host (loss sums, the gradient norm, non-finite flags) stays on the device until the step's
// one read. NoSyncScope marks that stretch of code.
//
// On CUDA, with QTRAIN_SYNC_CHECK=warn or =error in the environment, the scope turns on
// PyTorch's sync debug mode (c10::cuda::warning_state()), so any synchronising call inside it
// warns or throws; the default (unset, "off") costs nothing. On CPU there is no device to wait
// for; tests count what would have synchronised (.item(), i.e. aten::_local_scalar_dense) while
// NoSyncScope::active() holds.
#pragma once

#include <c10/core/Device.h>

namespace qtrain {

class NoSyncScope {
 public:
  explicit NoSyncScope(const c10::Device& device);
  ~NoSyncScope();
  NoSyncScope(const NoSyncScope&) = delete;
  NoSyncScope& operator=(const NoSyncScope&) = delete;

  // True on the calling thread while a scope is open.
  static bool active();

 private:
  bool set_cuda_mode_ = false;
  int previous_cuda_mode_ = 0;
};

}  // namespace qtrain

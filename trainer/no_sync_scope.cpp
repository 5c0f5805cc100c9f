#include "trainer/no_sync_scope.h"

#include "core/error.h"

#ifdef QTRAIN_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <cstdlib>
#include <cstring>

namespace qtrain {
namespace {

thread_local int open_scopes = 0;

#ifdef QTRAIN_WITH_CUDA
// QTRAIN_SYNC_CHECK: off (default) | warn | error.
c10::cuda::SyncDebugMode requested_cuda_mode() {
  const char* value = std::getenv("QTRAIN_SYNC_CHECK");
  if (value == nullptr || std::strcmp(value, "") == 0 || std::strcmp(value, "off") == 0) {
    return c10::cuda::SyncDebugMode::L_DISABLED;
  }
  if (std::strcmp(value, "warn") == 0) return c10::cuda::SyncDebugMode::L_WARN;
  if (std::strcmp(value, "error") == 0) return c10::cuda::SyncDebugMode::L_ERROR;
  throw_error(ErrorKind::kConfig,
              std::string("QTRAIN_SYNC_CHECK must be off, warn or error (got '") + value + "')",
              {.field = "QTRAIN_SYNC_CHECK"});
}
#endif

}  // namespace

NoSyncScope::NoSyncScope(const c10::Device& device) {
  ++open_scopes;
#ifdef QTRAIN_WITH_CUDA
  if (!device.is_cuda()) return;
  const c10::cuda::SyncDebugMode mode = requested_cuda_mode();
  if (mode == c10::cuda::SyncDebugMode::L_DISABLED) return;
  previous_cuda_mode_ = static_cast<int>(c10::cuda::warning_state().get_sync_debug_mode());
  c10::cuda::warning_state().set_sync_debug_mode(mode);
  set_cuda_mode_ = true;
#else
  (void)device;
#endif
}

NoSyncScope::~NoSyncScope() {
  --open_scopes;
#ifdef QTRAIN_WITH_CUDA
  if (set_cuda_mode_) {
    c10::cuda::warning_state().set_sync_debug_mode(
        static_cast<c10::cuda::SyncDebugMode>(previous_cuda_mode_));
  }
#endif
}

bool NoSyncScope::active() {
  return open_scopes > 0;
}

}  // namespace qtrain

#include "trainer/optim/state_memory.h"

#include "core/error.h"

#include <ATen/ATen.h>

#include <cstring>
#include <string>

#ifdef QTRAIN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/accumulate.h>
#include <cuda_runtime_api.h>
#endif

namespace qtrain {

#ifdef QTRAIN_WITH_CUDA
namespace {

void check_cuda(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the error so later CUDA calls do not report it again
    throw_error(ErrorKind::kInternal, what + " failed: " + cudaGetErrorString(status));
  }
}

// CUDA 13 passes a cudaMemLocation where CUDA 12 took a device ordinal.
#if CUDART_VERSION >= 13000
cudaMemLocation device_location(int device) {
  cudaMemLocation location{};
  location.type = cudaMemLocationTypeDevice;
  location.id = device;
  return location;
}
#endif

void advise_preferred_device(void* ptr, size_t bytes, int device) {
#if CUDART_VERSION >= 13000
  check_cuda(cudaMemAdvise(ptr, bytes, cudaMemAdviseSetPreferredLocation, device_location(device)),
             "cudaMemAdvise");
#else
  check_cuda(cudaMemAdvise(ptr, bytes, cudaMemAdviseSetPreferredLocation, device), "cudaMemAdvise");
#endif
}

bool concurrent_managed_access(int device) {
  int value = 0;
  check_cuda(cudaDeviceGetAttribute(&value, cudaDevAttrConcurrentManagedAccess, device),
             "cudaDeviceGetAttribute");
  return value != 0;
}

// Zero-filled managed memory as a tensor on `device`; cudaFree runs when the tensor's storage dies.
at::Tensor managed_zeros(at::IntArrayRef sizes, at::ScalarType dtype, at::Device device) {
  const c10::cuda::CUDAGuard guard(device);
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * c10::elementSize(dtype);
  void* ptr = nullptr;
  check_cuda(cudaMallocManaged(&ptr, bytes, cudaMemAttachHost),
             "cudaMallocManaged of " + std::to_string(bytes) + " bytes for optimizer state");
  // Host-attached memory is host-writable on every device; the pages move to the GPU at the
  // first prefetch (or fault).
  std::memset(ptr, 0, bytes);
  try {
    advise_preferred_device(ptr, bytes, device.index());
  } catch (...) {
    cudaFree(ptr);
    throw;
  }
  return at::from_blob(
      ptr, sizes, [](void* p) { cudaFree(p); }, at::TensorOptions().dtype(dtype).device(device));
}

}  // namespace
#endif

at::Tensor allocate_state(const at::Tensor& param, at::IntArrayRef sizes, at::ScalarType dtype,
                          bool paged) {
#ifdef QTRAIN_WITH_CUDA
  if (paged && param.is_cuda() && param.numel() >= kPagedMinNumel) {
    return managed_zeros(sizes, dtype, param.device());
  }
#endif
  return at::zeros(sizes, at::TensorOptions().dtype(dtype).device(param.device()));
}

bool is_managed_memory(const at::Tensor& t) {
#ifdef QTRAIN_WITH_CUDA
  if (!t.defined() || !t.is_cuda() || t.data_ptr() == nullptr) return false;
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, t.data_ptr()) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attributes.type == cudaMemoryTypeManaged;
#else
  (void)t;
  return false;
#endif
}

void prefetch_to_device(const at::Tensor& t) {
#ifdef QTRAIN_WITH_CUDA
  if (!is_managed_memory(t)) return;
  const int device = t.device().index();
  if (!concurrent_managed_access(device)) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#if CUDART_VERSION >= 13000
  check_cuda(cudaMemPrefetchAsync(t.data_ptr(), t.nbytes(), device_location(device), 0, stream),
             "cudaMemPrefetchAsync");
#else
  check_cuda(cudaMemPrefetchAsync(t.data_ptr(), t.nbytes(), device, stream),
             "cudaMemPrefetchAsync");
#endif
#else
  (void)t;
#endif
}

}  // namespace qtrain

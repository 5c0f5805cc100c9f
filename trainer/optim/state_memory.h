// Where optimizer states live. Plain states are ordinary zero tensors on the parameter's device.
// Paged states follow bitsandbytes' paged optimizers (reference/formats.md §2): on CUDA, the
// states of a parameter with at least kPagedMinNumel elements are allocated with
// cudaMallocManaged(cudaMemAttachHost), zero-filled, advised to prefer the parameter's GPU, and
// prefetched there before each update; under GPU memory pressure the driver evicts their pages to
// host memory instead of failing. On the CPU, and for smaller parameters, paged states are plain.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qtrain {

constexpr int64_t kPagedMinNumel = 100000;  // bitsandbytes: numel >= 1e5

// A zero-filled state tensor [sizes] of `dtype` on `param`'s device; in CUDA managed memory when
// `paged`, param is a CUDA tensor and param.numel() >= kPagedMinNumel.
at::Tensor allocate_state(const at::Tensor& param, at::IntArrayRef sizes, at::ScalarType dtype,
                          bool paged);

// True for a tensor whose memory cudaPointerGetAttributes reports as cudaMemoryTypeManaged.
bool is_managed_memory(const at::Tensor& t);

// Migrates a managed tensor's pages to its GPU ahead of use, ordered on the current CUDA stream
// (cudaMemPrefetchAsync). A no-op for other tensors, and on devices without
// cudaDevAttrConcurrentManagedAccess (there the driver migrates pages on fault).
void prefetch_to_device(const at::Tensor& t);

}  // namespace qtrain

// Activation offloading for checkpointed layers (training.offload_activations): the one tensor a
// checkpointed decoder layer keeps for backward, its input x [B, T, H], leaves the GPU as soon as
// the layer's forward has been queued and comes back one layer ahead of the backward that needs
// it, so device memory holds two or three layer inputs instead of all of them
// (torchtune's OffloadActivations, Unsloth's offloaded checkpointing).
//
// On CUDA the copies run on a side stream into pinned host memory and are ordered against the
// compute stream with events: device -> host after the layer's input is produced, host -> device
// of layer i-1's input when layer i's backward starts. The caching allocator is told about every
// cross-stream use (record_stream), so no block is reused before its copy has run.
// Elsewhere there is no device to free: the offloader is off, unless `simulate` asks for the
// same bookkeeping with plain host copies (the CPU test of the offloaded path's results).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <memory>

namespace qtrain {

class ActivationOffloader {
 public:
  // One offloader serves one forward pass and its backward.
  static std::shared_ptr<ActivationOffloader> create(const c10::Device& device, bool simulate);
  virtual ~ActivationOffloader() = default;

  // Forward of layer `index`: keeps x [B, T, H] off the device from now on.
  virtual void offload(int64_t index, const at::Tensor& x) = 0;
  // Backward of layer `index`: x again, on its device, ready for the compute stream; starts
  // bringing back layer index - 1's input. Each index is fetched once.
  virtual at::Tensor fetch(int64_t index) = 0;

  int64_t host_bytes() const { return host_bytes_; }            // held now
  int64_t peak_host_bytes() const { return peak_host_bytes_; }  // most held at once

 protected:
  void count_host(int64_t delta);

 private:
  int64_t host_bytes_ = 0;
  int64_t peak_host_bytes_ = 0;
};

}  // namespace qtrain

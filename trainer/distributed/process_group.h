// One rank's membership in a distributed job, on PyTorch's c10d: a TCPStore for rendezvous and
// small control messages, and a ProcessGroupGloo (CPU tensors) or ProcessGroupNCCL (CUDA tensors)
// backend for collectives.
//
// Every failure of a peer (it died, hung past the timeout, or its network went away) surfaces as
// Error(kPeer) naming this rank, the operation and the timeout, never as a hang: Gloo collectives
// and store reads give up after the timeout; NCCL's watchdog aborts the process after it.
#pragma once

#include "trainer/distributed/launch_env.h"

#include <ATen/core/Tensor.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace qtrain {

class ProcessGroup {
 public:
  // backend: "gloo" or "nccl". Blocks until all world_size ranks have joined, at most `timeout`.
  // With $QTRAIN_MASTER_LISTEN_FD set (qtrain --nproc), rank 0 serves the store on that already
  // listening socket instead of binding master_port, so no port is raced for.
  static std::unique_ptr<ProcessGroup> connect(const LaunchEnv& env, const std::string& backend,
                                               std::chrono::milliseconds timeout);
  ~ProcessGroup();

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  const std::string& backend() const { return backend_; }

  // In-place sum over all ranks of a contiguous tensor on the backend's device type.
  void all_reduce_sum(at::Tensor& tensor);
  // Starts the same; the returned function blocks until it is done (and throws its failure).
  std::function<void()> all_reduce_sum_async(at::Tensor& tensor);
  void all_reduce_max(at::Tensor& tensor);
  // Every rank's `input` [n] concatenated in rank order into `output` [world_size * n] (same
  // dtype, contiguous, on device()); the returned function blocks until it is done.
  std::function<void()> all_gather_async(at::Tensor& output, at::Tensor& input);
  // Scalars (loss sums, token counts, flags) summed or maxed over ranks, as float64.
  void all_reduce_sum(std::vector<double>& values);
  double all_reduce_max(double value);
  // Where the backend's tensors live: CPU for gloo, cuda:local_rank for nccl.
  at::Device device() const;
  // Rank `root`'s values into every rank's `tensor` (same shape and dtype everywhere).
  void broadcast(at::Tensor& tensor, int root);
  // Rank `root`'s `input` [world_size * n] split in rank order: part r lands in rank r's `output`
  // [n] (contiguous, on device()). `input` is read on the root only.
  void scatter(at::Tensor& output, const at::Tensor& input, int root);
  void barrier();

  // Every rank passes its own `value` of the same `what` (a recipe hash, a world size); throws
  // Error(kPeer) listing the ranks that disagree with rank 0.
  void check_same(const std::string& what, const std::string& value);
  // Small byte strings between ranks through the store (keys are namespaced by qtrain).
  void store_set(const std::string& key, const std::string& value);
  std::string store_get(const std::string& key);

  // Wraps c10d failures of `op` as Error(kPeer); rethrows qtrain errors unchanged.
  void guarded(const std::string& op, const std::function<void()>& body) const;

  struct State;

 private:
  ProcessGroup(LaunchEnv env, std::string backend, std::chrono::milliseconds timeout);

  LaunchEnv env_;
  std::string backend_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<State> state_;
  int64_t check_round_ = 0;
};

}  // namespace qtrain

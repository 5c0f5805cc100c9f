// Data-parallel gradient synchronisation: the adapter gradients of every rank summed in buckets,
// overlapped with backward.
//
// Parameters are grouped, in reverse registration order (roughly the order backward produces
// them), into float32 buckets of about `bucket_bytes`. While the last backward pass of a step
// runs, a hook on each parameter copies its final gradient (.grad so far + the incoming one) into
// its bucket slot; a bucket's all-reduce starts as soon as its last slot is filled, and buckets
// start strictly in index order so every rank issues the same collectives in the same order.
// finish() starts whatever is left (a parameter that got no gradient counts as zero), waits, and
// writes the sums back into .grad. Reducing in float32 keeps a bf16 adapter's sum as exact as
// one process accumulating the same micro-batches.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace qtrain {

class ProcessGroup;

class GradReducer {
 public:
  // params: the trainable leaves, any shapes and float dtypes, on the group's device type.
  GradReducer(ProcessGroup& group, std::vector<at::Tensor> params, int64_t bucket_bytes);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Arms the hooks for the next backward pass: call it before the step's last micro-batch.
  void prepare();
  // After that backward pass: every rank's .grad becomes the sum over ranks.
  void finish();

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  int64_t bytes_per_step() const;  // all-reduced payload per step
  // Buckets whose all-reduce started inside backward in the last step (overlap achieved).
  int64_t overlapped_buckets() const { return overlapped_; }

 private:
  struct Slot {
    int64_t bucket = 0;
    int64_t offset = 0;  // elements into the bucket
    bool filled = false;
  };
  struct Bucket {
    at::Tensor flat;  // float32 [elements]
    std::vector<int64_t> params;
    int64_t pending = 0;  // slots not yet filled this step
    bool started = false;
    std::function<void()> wait;
  };
  void on_gradient(int64_t index, const at::Tensor& incoming);
  void start_ready_buckets();
  void start(int64_t bucket);
  at::Tensor slot_view(int64_t index);

  ProcessGroup& group_;
  std::vector<at::Tensor> params_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  std::vector<unsigned> hook_ids_;
  bool armed_ = false;
  bool late_gradient_ = false;  // a gradient arrived for a bucket already in flight
  int64_t next_bucket_ = 0;
  int64_t overlapped_ = 0;
};

}  // namespace qtrain

#include "trainer/distributed/grad_reducer.h"

#include "trainer/distributed/process_group.h"

#include <ATen/ATen.h>

namespace qtrain {

GradReducer::GradReducer(ProcessGroup& group, std::vector<at::Tensor> params, int64_t bucket_bytes)
    : group_(group), params_(std::move(params)), slots_(params_.size()) {
  const int64_t bucket_elements = std::max<int64_t>(bucket_bytes / 4, 1);
  std::vector<int64_t> sizes;
  for (int64_t i = static_cast<int64_t>(params_.size()) - 1; i >= 0; --i) {
    if (buckets_.empty() || sizes.back() >= bucket_elements) {
      buckets_.emplace_back();
      sizes.push_back(0);
    }
    slots_[i] = {static_cast<int64_t>(buckets_.size()) - 1, sizes.back(), false};
    buckets_.back().params.push_back(i);
    sizes.back() += params_[i].numel();
  }
  for (size_t b = 0; b < buckets_.size(); ++b) {
    buckets_[b].flat = at::zeros({sizes[b]}, params_.front().options().dtype(at::kFloat));
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    hook_ids_.push_back(params_[i].register_hook(
        [this, i](const at::Tensor& grad) { on_gradient(static_cast<int64_t>(i), grad); }));
  }
}

GradReducer::~GradReducer() {
  for (size_t i = 0; i < params_.size(); ++i) params_[i].remove_hook(hook_ids_[i]);
}

int64_t GradReducer::bytes_per_step() const {
  int64_t bytes = 0;
  for (const Bucket& bucket : buckets_) bytes += bucket.flat.numel() * 4;
  return bytes;
}

at::Tensor GradReducer::slot_view(int64_t index) {
  const Slot& slot = slots_[index];
  return buckets_[slot.bucket].flat.narrow(0, slot.offset, params_[index].numel());
}

void GradReducer::prepare() {
  for (Bucket& bucket : buckets_) {
    bucket.pending = static_cast<int64_t>(bucket.params.size());
    bucket.started = false;
    bucket.wait = nullptr;
  }
  for (Slot& slot : slots_) slot.filled = false;
  next_bucket_ = 0;
  overlapped_ = 0;
  late_gradient_ = false;
  armed_ = true;
}

void GradReducer::on_gradient(int64_t index, const at::Tensor& incoming) {
  if (!armed_) return;
  Slot& slot = slots_[index];
  Bucket& bucket = buckets_[slot.bucket];
  if (bucket.started) {  // a second gradient for the same parameter: redo in finish()
    late_gradient_ = true;
    return;
  }
  // The hook runs before autograd adds `incoming` to .grad, so the final gradient is the sum.
  const at::Tensor& so_far = params_[index].grad();
  at::Tensor view = slot_view(index);
  if (so_far.defined()) {
    view.copy_((so_far.to(at::kFloat) + incoming.to(at::kFloat)).reshape(-1));
  } else {
    view.copy_(incoming.reshape(-1));
  }
  if (!slot.filled) {
    slot.filled = true;
    if (--bucket.pending == 0) start_ready_buckets();
  }
}

void GradReducer::start(int64_t b) {
  Bucket& bucket = buckets_[b];
  bucket.started = true;
  bucket.wait = group_.all_reduce_sum_async(bucket.flat);
}

void GradReducer::start_ready_buckets() {
  while (next_bucket_ < num_buckets() && buckets_[next_bucket_].pending == 0) {
    start(next_bucket_++);
    ++overlapped_;
  }
}

void GradReducer::finish() {
  armed_ = false;
  for (; next_bucket_ < num_buckets(); ++next_bucket_) {
    for (int64_t i : buckets_[next_bucket_].params) {
      if (slots_[i].filled) continue;
      const at::Tensor& grad = params_[i].grad();
      at::Tensor view = slot_view(i);
      grad.defined() ? view.copy_(grad.reshape(-1)) : view.zero_();
    }
    start(next_bucket_);
  }
  for (Bucket& bucket : buckets_) bucket.wait();
  if (late_gradient_) {
    // Some parameter got two gradients in one pass; its bucket went out too early. Every rank
    // runs the same graph, so all of them take this branch together.
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& grad = params_[i].grad();
      at::Tensor view = slot_view(static_cast<int64_t>(i));
      grad.defined() ? view.copy_(grad.reshape(-1)) : view.zero_();
    }
    for (Bucket& bucket : buckets_) group_.all_reduce_sum(bucket.flat);
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& param = params_[i];
    at::Tensor summed = slot_view(static_cast<int64_t>(i)).view(param.sizes()).to(param.dtype());
    if (param.grad().defined()) {
      param.mutable_grad().copy_(summed);
    } else {
      param.mutable_grad() = summed.clone();
    }
  }
}

}  // namespace qtrain

#include "trainer/optim/adamw.h"

#include "trainer/optim/state_dict_reader.h"
#include "trainer/optim/state_memory.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

namespace qtrain {

AdamW::AdamW(NamedParameters named_params, const AdamWOptions& options, bool paged,
             AdamWKernel kernel)
    : Optimizer(std::move(named_params), options),
      paged_(paged),
      kernel_(kernel),
      masters_(params_, paged) {
  states_.reserve(params_.size());
  for (const auto& [name, param] : params_) {
    State state;
    state.exp_avg = allocate_state(param, param.sizes(), at::kFloat, paged_);
    state.exp_avg_sq = allocate_state(param, param.sizes(), at::kFloat, paged_);
    if (resolve_adamw_kernel(kernel_, param.device()) == AdamWKernel::kFused) {
      state.device_step = at::zeros({}, param.options().dtype(at::kFloat));
    }
    states_.push_back(std::move(state));
  }
}

void AdamW::step() {
  const at::NoGradGuard no_grad;
  ++steps_;
  // One list per device: the multi-tensor kernels need all their tensors on one device.
  std::vector<std::pair<at::Device, AdamWLists>> groups;
  std::vector<size_t> updated;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& param = params_[i].second;
    const at::Tensor& grad = param.grad();
    if (!grad.defined()) continue;
    State& s = states_[i];
    if (paged_) {
      prefetch_to_device(s.exp_avg);
      prefetch_to_device(s.exp_avg_sq);
      masters_.prefetch(i);
    }
    s.step += 1;
    auto it = groups.begin();
    while (it != groups.end() && it->first != param.device()) ++it;
    if (it == groups.end()) it = groups.insert(groups.end(), {param.device(), AdamWLists{}});
    AdamWLists& l = it->second;
    l.params.push_back(masters_.update_target(i, param));
    l.grads.push_back(grad);
    l.exp_avgs.push_back(s.exp_avg);
    l.exp_avg_sqs.push_back(s.exp_avg_sq);
    l.steps.push_back(s.step);
    if (s.device_step.defined()) l.device_steps.push_back(s.device_step);
    updated.push_back(i);
  }
  for (auto& [device, lists] : groups) adamw_update(lists, options_, kernel_);
  masters_.publish(updated, params_);
}

std::map<std::string, at::Tensor> AdamW::state_dict() const {
  std::map<std::string, at::Tensor> out;
  out["step"] = step_tensor(steps_);
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_[i].first;
    out[name + ".step"] = step_tensor(states_[i].step);
    out[name + ".exp_avg"] = states_[i].exp_avg.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
    out[name + ".exp_avg_sq"] =
        states_[i].exp_avg_sq.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
  }
  masters_.add_to_state_dict(params_, out);
  return out;
}

void AdamW::load_state_dict(const std::map<std::string, at::Tensor>& state) {
  StateDictReader reader(state);
  const int64_t steps = reader.take_step("step");
  std::vector<int64_t> param_steps;
  std::vector<std::pair<at::Tensor, at::Tensor>> moments;
  for (const auto& [name, param] : params_) {
    param_steps.push_back(reader.take_step(name + ".step"));
    const at::Tensor exp_avg = reader.take(name + ".exp_avg", at::kFloat, param.sizes());
    const at::Tensor exp_avg_sq = reader.take(name + ".exp_avg_sq", at::kFloat, param.sizes());
    moments.emplace_back(exp_avg, exp_avg_sq);
  }
  const std::vector<at::Tensor> masters = masters_.read_state_dict(params_, reader);
  reader.reject_unexpected();

  const at::NoGradGuard no_grad;
  steps_ = steps;
  for (size_t i = 0; i < params_.size(); ++i) {
    State& s = states_[i];
    s.step = param_steps[i];
    s.exp_avg.copy_(moments[i].first);
    s.exp_avg_sq.copy_(moments[i].second);
    if (s.device_step.defined()) s.device_step.fill_(static_cast<double>(s.step));
  }
  masters_.load(params_, masters);
}

int64_t AdamW::state_bytes() const {
  int64_t bytes = masters_.bytes();
  for (const State& s : states_) {
    bytes += static_cast<int64_t>(s.exp_avg.nbytes() + s.exp_avg_sq.nbytes());
  }
  return bytes;
}

std::vector<at::Tensor> AdamW::state_buffers() const {
  std::vector<at::Tensor> out;
  for (const State& s : states_) {
    out.push_back(s.exp_avg);
    out.push_back(s.exp_avg_sq);
  }
  for (const at::Tensor& m : masters_.buffers()) {
    if (m.defined()) out.push_back(m);
  }
  return out;
}

}  // namespace qtrain

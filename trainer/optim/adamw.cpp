#include "trainer/optim/adamw.h"

#include "trainer/optim/state_dict_reader.h"
#include "trainer/optim/state_memory.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

namespace qtrain {

AdamW::AdamW(NamedParameters named_params, const AdamWOptions& options, bool paged)
    : Optimizer(std::move(named_params), options), paged_(paged) {
  states_.reserve(params_.size());
  for (const auto& [name, param] : params_) {
    State state;
    state.exp_avg = allocate_state(param, param.sizes(), at::kFloat, paged_);
    state.exp_avg_sq = allocate_state(param, param.sizes(), at::kFloat, paged_);
    states_.push_back(std::move(state));
  }
}

void AdamW::step() {
  const at::NoGradGuard no_grad;
  ++steps_;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& param = params_[i].second;
    const at::Tensor& grad = param.grad();
    if (!grad.defined()) continue;
    if (paged_) {
      prefetch_to_device(states_[i].exp_avg);
      prefetch_to_device(states_[i].exp_avg_sq);
    }
    update(param, grad, states_[i]);
  }
}

// param, grad: the same shape (any float dtype); the states float32 of that shape.
void AdamW::update(at::Tensor& param, const at::Tensor& grad, State& state) const {
  const AdamWOptions& o = options_;
  state.step += 1;
  const bool float32 = param.scalar_type() == at::kFloat;
  at::Tensor p = float32 ? param : param.to(at::kFloat);
  const at::Tensor g = grad.to(at::kFloat);

  if (o.weight_decay != 0) p.mul_(1 - o.lr * o.weight_decay);
  state.exp_avg.lerp_(g, 1 - o.beta1);
  state.exp_avg_sq.mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);

  const double t = static_cast<double>(state.step);
  const double bias_correction1 = 1 - std::pow(o.beta1, t);
  const double bias_correction2 = 1 - std::pow(o.beta2, t);
  const double step_size = o.lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  const at::Tensor denom = (state.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(o.eps);
  p.addcdiv_(state.exp_avg, denom, -step_size);

  if (!float32) param.copy_(p);
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
  reader.reject_unexpected();

  const at::NoGradGuard no_grad;
  steps_ = steps;
  for (size_t i = 0; i < params_.size(); ++i) {
    states_[i].step = param_steps[i];
    states_[i].exp_avg.copy_(moments[i].first);
    states_[i].exp_avg_sq.copy_(moments[i].second);
  }
}

int64_t AdamW::state_bytes() const {
  int64_t bytes = 0;
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
  return out;
}

}  // namespace qtrain

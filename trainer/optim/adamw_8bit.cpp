#include "trainer/optim/adamw_8bit.h"

#include "quant/codebooks.h"
#include "trainer/optim/adam_8bit_kernel.h"
#include "trainer/optim/state_dict_reader.h"
#include "trainer/optim/state_memory.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

namespace qtrain {
namespace {

int64_t num_blocks(int64_t n) {
  return (n + kAdam8bitBlocksize - 1) / kAdam8bitBlocksize;
}

at::Tensor cpu_copy(const at::Tensor& t) {
  return t.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
}

}  // namespace

AdamW8bit::AdamW8bit(NamedParameters named_params, const AdamWOptions& options, bool paged)
    : Optimizer(std::move(named_params), options), paged_(paged), masters_(params_, paged) {
  states_.reserve(params_.size());
  for (const auto& [name, param] : params_) {
    State s;
    s.blockwise = param.numel() >= kAdam8bitMinNumel;
    const at::ScalarType moment_type = s.blockwise ? at::kByte : at::kFloat;
    s.exp_avg = allocate_state(param, param.sizes(), moment_type, paged_);
    s.exp_avg_sq = allocate_state(param, param.sizes(), moment_type, paged_);
    if (s.blockwise) {
      const auto on_device = at::TensorOptions().dtype(at::kFloat).device(param.device());
      s.absmax1 = at::zeros({num_blocks(param.numel())}, on_device);
      s.absmax2 = at::zeros({num_blocks(param.numel())}, on_device);
      s.qmap1 = dynamic_code_signed().to(param.device());
      s.qmap2 = dynamic_code_unsigned().to(param.device());
    }
    states_.push_back(std::move(s));
  }
}

void AdamW8bit::step() {
  const at::NoGradGuard no_grad;
  ++steps_;
  // The blockwise parameters per device, with that device's code tables (every blockwise state
  // holds the same two): one multi-tensor update each.
  struct DeviceGroup {
    at::Device device;
    at::Tensor qmap1, qmap2;
    std::vector<Adam8bitBlockwiseTensors> params;
  };
  std::vector<DeviceGroup> groups;
  std::vector<size_t> updated;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& param = params_[i].second;
    const at::Tensor& grad = param.grad();
    if (!grad.defined()) continue;
    State& s = states_[i];
    s.step += 1;
    if (paged_) {
      prefetch_to_device(s.exp_avg);
      prefetch_to_device(s.exp_avg_sq);
      masters_.prefetch(i);
    }
    const Adam8bitStep hyper{
        static_cast<float>(options_.lr),           static_cast<float>(options_.beta1),
        static_cast<float>(options_.beta2),        static_cast<float>(options_.eps),
        static_cast<float>(options_.weight_decay), s.step};
    at::Tensor target = masters_.update_target(i, param);
    updated.push_back(i);
    if (!s.blockwise) {
      adam_32bit_bnb_update(target, grad, s.exp_avg, s.exp_avg_sq, hyper);
      continue;
    }
    auto it = groups.begin();
    while (it != groups.end() && it->device != param.device()) ++it;
    if (it == groups.end())
      it = groups.insert(groups.end(), {param.device(), s.qmap1, s.qmap2, {}});
    it->params.push_back({target, grad, s.exp_avg, s.exp_avg_sq, s.absmax1, s.absmax2, hyper});
  }
  for (DeviceGroup& g : groups) adam_8bit_blockwise_update_many(g.params, g.qmap1, g.qmap2);
  masters_.publish(updated, params_);
}

std::map<std::string, at::Tensor> AdamW8bit::state_dict() const {
  std::map<std::string, at::Tensor> out;
  out["step"] = step_tensor(steps_);
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_[i].first;
    const State& s = states_[i];
    out[name + ".step"] = step_tensor(s.step);
    if (s.blockwise) {
      out[name + ".exp_avg.codes"] = cpu_copy(s.exp_avg);
      out[name + ".exp_avg.absmax"] = cpu_copy(s.absmax1);
      out[name + ".exp_avg_sq.codes"] = cpu_copy(s.exp_avg_sq);
      out[name + ".exp_avg_sq.absmax"] = cpu_copy(s.absmax2);
    } else {
      out[name + ".exp_avg"] = cpu_copy(s.exp_avg);
      out[name + ".exp_avg_sq"] = cpu_copy(s.exp_avg_sq);
    }
  }
  masters_.add_to_state_dict(params_, out);
  return out;
}

void AdamW8bit::load_state_dict(const std::map<std::string, at::Tensor>& state) {
  struct Loaded {
    int64_t step;
    at::Tensor exp_avg, exp_avg_sq, absmax1, absmax2;
  };
  StateDictReader reader(state);
  const int64_t steps = reader.take_step("step");
  std::vector<Loaded> loaded;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, param] = params_[i];
    Loaded l;
    l.step = reader.take_step(name + ".step");
    if (states_[i].blockwise) {
      const std::vector<int64_t> blocks{num_blocks(param.numel())};
      l.exp_avg = reader.take(name + ".exp_avg.codes", at::kByte, param.sizes());
      l.absmax1 = reader.take(name + ".exp_avg.absmax", at::kFloat, blocks);
      l.exp_avg_sq = reader.take(name + ".exp_avg_sq.codes", at::kByte, param.sizes());
      l.absmax2 = reader.take(name + ".exp_avg_sq.absmax", at::kFloat, blocks);
    } else {
      l.exp_avg = reader.take(name + ".exp_avg", at::kFloat, param.sizes());
      l.exp_avg_sq = reader.take(name + ".exp_avg_sq", at::kFloat, param.sizes());
    }
    loaded.push_back(std::move(l));
  }
  const std::vector<at::Tensor> masters = masters_.read_state_dict(params_, reader);
  reader.reject_unexpected();

  const at::NoGradGuard no_grad;
  steps_ = steps;
  for (size_t i = 0; i < params_.size(); ++i) {
    State& s = states_[i];
    s.step = loaded[i].step;
    s.exp_avg.copy_(loaded[i].exp_avg);
    s.exp_avg_sq.copy_(loaded[i].exp_avg_sq);
    if (s.blockwise) {
      s.absmax1.copy_(loaded[i].absmax1);
      s.absmax2.copy_(loaded[i].absmax2);
    }
  }
  masters_.load(params_, masters);
}

int64_t AdamW8bit::state_bytes() const {
  int64_t bytes = masters_.bytes();
  for (const State& s : states_) {
    bytes += static_cast<int64_t>(s.exp_avg.nbytes() + s.exp_avg_sq.nbytes());
    if (s.blockwise) bytes += static_cast<int64_t>(s.absmax1.nbytes() + s.absmax2.nbytes());
  }
  return bytes;
}

std::vector<at::Tensor> AdamW8bit::state_buffers() const {
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

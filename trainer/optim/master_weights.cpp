#include "trainer/optim/master_weights.h"

#include "trainer/optim/state_memory.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <utility>

namespace qtrain {

MasterWeights::MasterWeights(const NamedParameters& params, bool paged) {
  masters_.reserve(params.size());
  for (const auto& [name, param] : params) {
    masters_.push_back(param.scalar_type() == at::kFloat
                           ? at::Tensor()
                           : allocate_state(param, param.sizes(), at::kFloat, paged));
  }
  initialised_.assign(params.size(), false);
}

at::Tensor MasterWeights::update_target(size_t i, const at::Tensor& param) {
  if (!has(i)) return param;
  if (!initialised_[i]) {
    const at::NoGradGuard no_grad;
    masters_[i].copy_(param);
    initialised_[i] = true;
  }
  return masters_[i];
}

void MasterWeights::publish(const std::vector<size_t>& updated, NamedParameters& params) const {
  // _foreach_copy_ takes its fast multi-tensor path only within one device and dtype.
  std::vector<std::pair<std::pair<at::Device, at::ScalarType>,
                        std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>>>>
      groups;
  for (const size_t i : updated) {
    if (!has(i)) continue;
    const at::Tensor& param = params[i].second;
    const std::pair<at::Device, at::ScalarType> key{param.device(), param.scalar_type()};
    auto it = groups.begin();
    while (it != groups.end() && it->first != key) ++it;
    if (it == groups.end()) it = groups.insert(groups.end(), {key, {}});
    it->second.first.push_back(param);
    it->second.second.push_back(masters_[i]);
  }
  const at::NoGradGuard no_grad;
  for (auto& [key, lists] : groups) at::_foreach_copy_(lists.first, lists.second);
}

void MasterWeights::prefetch(size_t i) const {
  if (has(i)) prefetch_to_device(masters_[i]);
}

void MasterWeights::add_to_state_dict(const NamedParameters& params,
                                      std::map<std::string, at::Tensor>& out) const {
  for (size_t i = 0; i < params.size(); ++i) {
    if (!has(i)) continue;
    const at::Tensor& value = initialised_[i] ? masters_[i] : params[i].second.detach();
    out[params[i].first + ".master"] =
        value.to(at::kCPU, at::kFloat, /*non_blocking=*/false, /*copy=*/true);
  }
}

std::vector<at::Tensor> MasterWeights::read_state_dict(const NamedParameters& params,
                                                       StateDictReader& reader) const {
  std::vector<at::Tensor> loaded(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    if (!has(i)) continue;
    const auto& [name, param] = params[i];
    if (const at::Tensor* t = reader.take_if_present(name + ".master", at::kFloat, param.sizes())) {
      loaded[i] = *t;
    }
  }
  return loaded;
}

void MasterWeights::load(const NamedParameters& params, const std::vector<at::Tensor>& loaded) {
  const at::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!has(i)) continue;
    initialised_[i] = loaded[i].defined();
    if (!initialised_[i]) continue;
    const at::Tensor param = params[i].second.detach();
    const at::Tensor master = loaded[i].to(param.device());
    masters_[i].copy_(at::where(master.to(param.scalar_type()).eq(param), master, param));
  }
}

int64_t MasterWeights::bytes() const {
  int64_t total = 0;
  for (const at::Tensor& m : masters_) {
    if (m.defined()) total += static_cast<int64_t>(m.nbytes());
  }
  return total;
}

}  // namespace qtrain

#include "trainer/distributed/data_parallel.h"

#include "core/error.h"
#include "core/log.h"
#include "core/text.h"
#include "trainer/distributed/grad_reducer.h"
#include "trainer/distributed/process_group.h"
#include "trainer/recipe/recipe.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include <cstdio>

namespace qtrain {

std::string text_hash(const std::string& text) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a_64(text)));
  return hex;
}

DataParallel::DataParallel() = default;
DataParallel::~DataParallel() {
  reducer_.reset();  // its hooks refer to the group
}
DataParallel::DataParallel(DataParallel&&) noexcept = default;
DataParallel& DataParallel::operator=(DataParallel&&) noexcept = default;

DataParallel DataParallel::join(const Recipe& recipe, const LaunchEnv& env, bool resume) {
  DataParallel dp;
  if (!env.distributed()) return dp;
  const auto& d = recipe.distributed;
  if (d.backend == "none") {
    throw_error(ErrorKind::kConfig,
                "distributed.backend is none, but the " + env.source + " makes this rank " +
                    std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                    "; every rank would train alone into the same output.dir",
                {.field = "distributed.backend"});
  }
  dp.env_ = env;
  log::set_rank(env.rank, env.world_size);
  std::string backend = d.backend;
  if (backend == "auto") {
    const std::string device = dp.device_for_rank(recipe.model.device);
    backend = device.rfind("cuda", 0) == 0 ? "nccl" : "gloo";
  }
  dp.group_ = ProcessGroup::connect(env, backend, std::chrono::milliseconds(d.timeout_s * 1000));
  const std::string what = recipe_to_yaml(recipe) + (resume ? "--resume\n" : "");
  dp.group_->check_same("recipe or --resume (recipe hash " + text_hash(what) + " on rank 0)",
                        text_hash(what));
  return dp;
}

std::string DataParallel::device_for_rank(const std::string& recipe_device) const {
  if (!env_.distributed()) return recipe_device;
  return qtrain::device_for_rank(recipe_device, env_, at::hasCUDA() && at::getNumGPUs() > 0);
}

std::string DataParallel::from_main(const std::string& key, const std::string& value) {
  if (!active()) return value;
  const std::string name = "shared/" + std::to_string(shared_keys_++) + "/" + key;
  if (is_main()) group_->store_set(name, value);
  return is_main() ? value : group_->store_get(name);
}

void DataParallel::sum(std::vector<double>& values) {
  if (active()) group_->all_reduce_sum(values);
}

bool DataParallel::any(bool flag) {
  if (!active()) return flag;
  return group_->all_reduce_max(flag ? 1.0 : 0.0) > 0;
}

void DataParallel::barrier() {
  if (active()) group_->barrier();
}

void DataParallel::broadcast(const std::vector<at::Tensor>& tensors) {
  if (!active()) return;
  torch::NoGradGuard no_grad;
  for (const at::Tensor& tensor : tensors) {
    at::Tensor staged = tensor.to(group_->device()).contiguous();
    group_->broadcast(staged, 0);
    tensor.copy_(staged);
  }
}

void DataParallel::attach(const std::vector<at::Tensor>& params, int64_t bucket_mb) {
  if (!active()) return;
  reducer_ = std::make_unique<GradReducer>(*group_, params, bucket_mb << 20);
  log::info("gradient all-reduce: ", reducer_->num_buckets(), " buckets, ",
            reducer_->bytes_per_step(), " bytes per step over ", world_size(), " ranks (",
            group_->backend(), ")");
}

void DataParallel::gather_rng_states(std::map<std::string, at::Tensor>& states, int64_t step) {
  if (!active()) return;
  const std::string prefix = "rng/" + std::to_string(step) + "/";
  if (!is_main()) {
    nlohmann::json mine = nlohmann::json::object();
    for (const auto& [name, state] : states) {
      const at::Tensor bytes = state.contiguous();
      const auto* data = bytes.data_ptr<uint8_t>();
      mine[name] = nlohmann::json::binary({data, data + bytes.numel()});
    }
    const std::vector<uint8_t> cbor = nlohmann::json::to_cbor(mine);
    group_->store_set(prefix + std::to_string(rank()), std::string(cbor.begin(), cbor.end()));
    return;
  }
  for (int r = 1; r < world_size(); ++r) {
    const std::string cbor = group_->store_get(prefix + std::to_string(r));
    const nlohmann::json theirs = nlohmann::json::from_cbor(cbor.begin(), cbor.end());
    for (const auto& [name, value] : theirs.items()) {
      const auto& bytes = value.get_binary();
      states["rank" + std::to_string(r) + "/" + name] =
          at::tensor(std::vector<uint8_t>(bytes.begin(), bytes.end()), at::dtype(at::kByte));
    }
  }
}

std::map<std::string, at::Tensor> DataParallel::own_rng_states(
    const std::map<std::string, at::Tensor>& saved) const {
  std::map<std::string, at::Tensor> mine;
  const std::string prefix = "rank" + std::to_string(rank()) + "/";
  for (const auto& [name, state] : saved) {
    const bool prefixed = name.rfind("rank", 0) == 0 && name.find('/') != std::string::npos;
    if (rank() == 0 && !prefixed) mine[name] = state;
    if (rank() != 0 && name.rfind(prefix, 0) == 0) mine[name.substr(prefix.size())] = state;
  }
  if (rank() != 0 && mine.empty()) {
    throw_error(ErrorKind::kPeer, "the checkpoint holds no random state for rank " +
                                      std::to_string(rank()) +
                                      " (it was written by a run with fewer ranks)");
  }
  return mine;
}

}  // namespace qtrain

#include "trainer/train_checkpoint.h"

#include "core/atomic_file.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/json_file.h"
#include "core/log.h"
#include "core/read_file.h"
#include "core/shape_string.h"
#include "core/staging_dir.h"
#include "formats/checkpoint/checkpoint_dir.h"
#include "formats/safetensors/safetensors.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <optional>
#include <regex>

namespace qtrain {
namespace fs = std::filesystem;
namespace {

c10::Device device_of(const std::string& name) {
  return name == "cpu" ? c10::Device(c10::kCPU) : c10::Device(name);
}

// "cpu", "cuda:<n>", or either after "rank<r>/" (the other ranks' states, which rank 0 saves).
bool is_generator_state_name(const std::string& name) {
  static const std::regex kName("(rank[1-9][0-9]*/)?(cpu|cuda:[0-9]{1,3})");
  return std::regex_match(name, kName);
}

[[noreturn]] void not_a_generator_state(const std::string& file, const std::string& name) {
  throw_error(ErrorKind::kFormat,
              "not a generator state: expected cpu or cuda:N (after rankR/ for the other ranks)",
              {.file = file, .tensor = name});
}

// The size of what set_state accepts for `device_name`: get_state() of this process's generator;
// nullopt for a device this machine lacks (restore_rng_states reports that one).
std::optional<int64_t> generator_state_bytes(const std::string& device_name,
                                             const std::string& file, const std::string& tensor) {
  c10::Device device(c10::kCPU);
  if (device_name != "cpu") {
    const int64_t index = std::stoll(device_name.substr(device_name.find(':') + 1));
    if (index > std::numeric_limits<c10::DeviceIndex>::max()) not_a_generator_state(file, tensor);
    if (index >= static_cast<int64_t>(at::getNumGPUs())) return std::nullopt;
    device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state().numel();
}

// rng.safetensors as set_state will take it, so a damaged file is a format error naming the
// tensor, not LibTorch's "Expected a CPUGeneratorImplState of size ..." from deep in the resume.
void check_rng_states(const std::map<std::string, at::Tensor>& states, const std::string& file) {
  for (const auto& [name, state] : states) {
    if (!is_generator_state_name(name)) not_a_generator_state(file, name);
    if (state.scalar_type() != at::kByte || state.dim() != 1) {
      throw_error(ErrorKind::kFormat,
                  "a generator state is a 1-D uint8 tensor, got " +
                      scalar_type_name(state.scalar_type()) + " " + shape_string(state.sizes()),
                  {.file = file, .tensor = name});
    }
    const std::string device_name = name.substr(name.find('/') + 1);  // npos + 1 == 0
    const std::optional<int64_t> expected = generator_state_bytes(device_name, file, name);
    if (expected && state.numel() != *expected) {
      throw_error(ErrorKind::kFormat,
                  std::to_string(state.numel()) + " bytes, but this LibTorch's " + device_name +
                      " generator state has " + std::to_string(*expected),
                  {.file = file, .tensor = name});
    }
  }
  if (!states.count("cpu")) {
    throw_error(ErrorKind::kFormat, "no CPU generator state (tensor 'cpu')", {.file = file});
  }
}

std::map<std::string, at::Tensor> read_tensor_file(const std::string& path) {
  auto file = SafetensorsFile::open(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& name : file->names()) out[name] = file->tensor(name).clone();
  return out;
}

// The fields the trainer reads back on resume, with their types and ranges, so a damaged file
// is a format error naming the field rather than a failure deep inside the resume.
void check_trainer_state(const nlohmann::json& state, const std::string& file) {
  if (!state.is_object()) {
    throw_error(ErrorKind::kFormat, "trainer state is not a JSON object", {.file = file});
  }
  auto require_count = [&](const nlohmann::json& parent, const std::string& key,
                           const std::string& field, bool required, int64_t minimum) {
    if (!parent.contains(key)) {
      if (!required) return;
      throw_error(ErrorKind::kFormat, "missing", {.file = file, .field = field});
    }
    const nlohmann::json& value = parent[key];
    if (!value.is_number_integer() || value.get<int64_t>() < minimum) {
      throw_error(ErrorKind::kFormat,
                  "must be an integer >= " + std::to_string(minimum) + ", got " + value.dump(),
                  {.file = file, .field = field});
    }
  };
  require_count(state, "step", "step", true, 0);
  if (!state.contains("cursor") || !state["cursor"].is_object()) {
    throw_error(ErrorKind::kFormat, "missing or not an object", {.file = file, .field = "cursor"});
  }
  require_count(state["cursor"], "epoch", "cursor.epoch", true, 0);
  require_count(state["cursor"], "position", "cursor.position", true, 0);
  require_count(state, "world_size", "world_size", false, 1);
  require_count(state, "skipped_steps", "skipped_steps", false, 0);
  require_count(state, "total_steps", "total_steps", false, 0);
  require_count(state, "loss_steps", "loss_steps", false, 0);
  for (const char* key : {"first_eval_loss", "loss_mean"}) {
    if (state.contains(key) && !state[key].is_number()) {
      throw_error(ErrorKind::kFormat, "must be a number", {.file = file, .field = key});
    }
  }
}

}  // namespace

std::map<std::string, at::Tensor> capture_rng_states(const std::optional<int64_t>& cuda_device) {
  std::map<std::string, at::Tensor> states;
  std::vector<c10::Device> devices = {c10::Device(c10::kCPU)};
  if (cuda_device) devices.emplace_back(c10::kCUDA, static_cast<c10::DeviceIndex>(*cuda_device));
  for (const auto& device : devices) {
    at::Generator gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    states[device.is_cpu() ? "cpu" : device.str()] = gen.get_state().clone();
  }
  return states;
}

void restore_rng_states(const std::map<std::string, at::Tensor>& states) {
  for (const auto& [name, state] : states) {
    const c10::Device device = device_of(name);
    if (device.is_cuda() && device.index() >= static_cast<int64_t>(at::getNumGPUs())) {
      throw_error(ErrorKind::kUnsupported, "the checkpoint holds the random state of " + name +
                                               ", which this machine lacks");
    }
    at::Generator gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
  }
}

std::string save_train_checkpoint(const std::string& run_dir, const TrainCheckpoint& state,
                                  const std::function<void(const std::string&)>& write_adapter,
                                  int64_t keep_last) {
  const std::string root = run_dir + "/checkpoints";
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw_error(ErrorKind::kIo, "cannot create directory: " + ec.message(), {.file = root});
  const std::string target = root + "/" + checkpoint_dir_name(state.step);
  remove_stale_checkpoint_temps(root);
  const fs::path staging = make_staging_dir(target);
  try {
    write_adapter(staging.string());
    NamedTensors optimizer(state.optimizer.begin(), state.optimizer.end());
    write_safetensors((staging / "optimizer.safetensors").string(), optimizer);
    NamedTensors rng(state.rng.begin(), state.rng.end());
    write_safetensors((staging / "rng.safetensors").string(), rng);
    nlohmann::json info = state.trainer_state;
    info["step"] = state.step;
    write_file_atomically((staging / "trainer_state.json").string(), info.dump(2) + "\n");
    install_checkpoint_dir(staging, target);
  } catch (...) {
    remove_tree(staging);
    throw;
  }
  write_file_atomically(root + "/latest", checkpoint_dir_name(state.step) + "\n");
  prune_checkpoints(root, keep_last, checkpoint_dir_name(state.step));
  return target;
}

TrainCheckpoint load_train_checkpoint(const std::string& dir) {
  TrainCheckpoint state;
  const std::string info_path = dir + "/trainer_state.json";
  std::error_code ec;
  if (!fs::exists(info_path, ec))
    throw_error(ErrorKind::kIo, "cannot read the checkpoint's trainer state", {.file = info_path});
  const std::string text =
      read_small_file(info_path, kMaxConfigJsonBytes, "the checkpoint's trainer state");
  try {
    state.trainer_state = parse_json_text(text, info_path);
  } catch (const nlohmann::json::exception& e) {
    throw_error(ErrorKind::kFormat, std::string("malformed trainer state: ") + e.what(),
                {.file = info_path});
  }
  check_trainer_state(state.trainer_state, info_path);
  state.step = state.trainer_state["step"].get<int64_t>();
  state.optimizer = read_tensor_file(dir + "/optimizer.safetensors");
  state.rng = read_tensor_file(dir + "/rng.safetensors");
  check_rng_states(state.rng, dir + "/rng.safetensors");
  return state;
}

}  // namespace qtrain

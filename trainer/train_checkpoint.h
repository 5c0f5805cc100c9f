// Train-state checkpoints: everything a run needs to continue exactly where it stopped.
//
//   <run>/checkpoints/step-00000040/
//     adapter_config.json, adapter_model.safetensors   the adapter, as HF PEFT loads it
//     optimizer.safetensors                             Optimizer::state_dict()
//     rng.safetensors                                   generator states ("cpu", "cuda:0", ...)
//     trainer_state.json                                step, data cursor, counters
//   <run>/checkpoints/latest                            name of the newest complete checkpoint
//
// A checkpoint is built in a staging directory and renamed into place, so a crash or a kill
// leaves either the complete directory or none; `latest` is replaced atomically afterwards, and
// pruning and re-saving keep every `step-N` complete too (formats/checkpoint/checkpoint_dir.h,
// which also has latest_checkpoint).
#pragma once

#include "formats/checkpoint/checkpoint_dir.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

struct TrainCheckpoint {
  int64_t step = 0;                                         // optimizer steps completed
  nlohmann::json trainer_state = nlohmann::json::object();  // cursor, counters (trainer's own)
  std::map<std::string, at::Tensor> optimizer;              // Optimizer::state_dict()
  std::map<std::string, at::Tensor> rng;  // device name -> generator state (uint8)
};

// Generator states of the CPU and, when given, one CUDA device; and their restoration.
std::map<std::string, at::Tensor> capture_rng_states(const std::optional<int64_t>& cuda_device);
void restore_rng_states(const std::map<std::string, at::Tensor>& states);

// Writes `state` as <run>/checkpoints/step-<n>/; `write_adapter(dir)` writes the adapter files
// into the staging directory. Keeps the newest `keep_last` checkpoints and removes older ones.
// Returns the checkpoint's directory.
std::string save_train_checkpoint(const std::string& run_dir, const TrainCheckpoint& state,
                                  const std::function<void(const std::string&)>& write_adapter,
                                  int64_t keep_last);

// Reads optimizer, rng and trainer_state of a checkpoint directory (the adapter is read with
// load_peft_adapter). Errors name the file.
TrainCheckpoint load_train_checkpoint(const std::string& checkpoint_dir);

}  // namespace qtrain

// The model a recipe trains: the base loaded and quantized as `quantization` says, on the
// recipe's device and compute dtype, with trainable adapters attached as `adapter` says.
#pragma once

#include "models/model_dir.h"
#include "peft/apply_lora.h"
#include "peft/lora_config.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <memory>
#include <string>

namespace qtrain {

class CausalLM;
class ShardedLoad;
struct Recipe;

struct TrainingModel {
  std::shared_ptr<CausalLM> model;
  NamedAdapters adapters;
  LoraConfig lora;
  int64_t qalora_group_size = 0;  // > 0 for QA-LoRA adapters
  std::string model_dir;          // resolved (builtin models live in the cache)
  c10::Device device = c10::kCPU;
  at::ScalarType dtype = at::kFloat;
};

// model.device: "auto" picks CUDA when available. Throws Error(kConfig) naming model.device for a
// CUDA device this machine lacks.
c10::Device resolve_device(const std::string& name);
at::ScalarType resolve_dtype(const std::string& name, const std::string& field);

// The recipe's LoRA settings for peft/.
LoraConfig lora_config_of(const Recipe& recipe);

// Loads the base and attaches fresh adapters (seeded by training.seed), or the adapter of
// adapter.init_from. With `sharded`, the decoder projections load through it (each rank reads and
// quantizes its share; models/sharded_load.h). `prepare_base`, when given, runs on the loaded
// base before adapters wrap its projections.
TrainingModel build_training_model(const Recipe& recipe, ShardedLoad* sharded = nullptr,
                                   const std::function<void(CausalLM&)>& prepare_base = {});

}  // namespace qtrain

#include "trainer/training_model.h"

#include "core/error.h"
#include "core/log.h"
#include "models/hf_loader.h"
#include "models/int4_loader.h"
#include "models/llama.h"
#include "models/model_dir.h"
#include "models/quantized_loader.h"
#include "models/synthetic_model.h"
#include "models/tiny_model.h"
#include "peft/apply_qalora.h"
#include "peft/peft_files.h"
#include "peft/target_modules.h"
#include "quant/quantized_tensor.h"
#include "trainer/dry_run.h"
#include "trainer/recipe/recipe.h"

#include <ATen/Context.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <tuple>

namespace qtrain {
namespace fs = std::filesystem;
namespace {

EmbeddingPlacement embedding_placement(const Recipe& recipe) {
  return recipe.model.embeddings_on_host ? EmbeddingPlacement::kHost : EmbeddingPlacement::kDevice;
}

std::shared_ptr<CausalLM> load_base(const Recipe& recipe, const std::string& dir,
                                    const c10::Device& device, at::ScalarType dtype,
                                    ShardedLoad* sharded) {
  const auto& q = recipe.quantization;
  const EmbeddingPlacement embeddings = embedding_placement(recipe);
  if (q.type == "none") {
    return load_causal_lm(dir, {.dtype = dtype, .device = device, .embeddings = embeddings});
  }
  if (q.type == "int4") {
    return load_int4_causal_lm(dir, {.dtype = dtype,
                                     .device = device,
                                     .group_size = q.group_size,
                                     .skip_modules = q.skip_modules,
                                     .embeddings = embeddings});
  }
  QuantizedLoadOptions options;
  options.embeddings = embeddings;
  options.dtype = dtype;
  options.device = device;
  options.quant.type = quant_type_from_name(q.type);
  options.quant.blocksize = q.blocksize;
  options.quant.double_quant = q.double_quant;
  options.skip_modules = q.skip_modules;
  options.sharded = sharded;
  return load_quantized_causal_lm(dir, options);
}

std::shared_ptr<CausalLM> synthetic_base(const Recipe& recipe, const c10::Device& device,
                                         at::ScalarType dtype, ShardedLoad* sharded) {
  const auto& q = recipe.quantization;
  SyntheticModelOptions options;
  options.dtype = dtype;
  options.device = device;
  options.seed = recipe.training.seed;
  options.skip_modules = q.skip_modules;
  options.embeddings = embedding_placement(recipe);
  options.sharded = sharded;
  if (q.type != "none") {
    options.quant = QuantConfig{.type = quant_type_from_name(q.type),
                                .blocksize = q.blocksize,
                                .double_quant = q.double_quant};
  }
  try {
    return make_synthetic_causal_lm(recipe_model_config(recipe), options);
  } catch (const Error& e) {
    // The shape came from model.known_config when set, else from model.path.
    throw e.with_context(
        {.field = recipe.model.known_config.empty() ? "model.path" : "model.known_config"});
  }
}

// The recipe bounds adapter.r at 2^16; the model bounds it further: a rank above every targeted
// projection's width adds nothing, and only makes the adapters larger (up to what no allocator
// can give).
void check_rank_fits_targets(const CausalLM& model, const LoraConfig& lora) {
  std::map<std::string, std::shared_ptr<LinearSlot>> slots;
  for (const auto& [name, slot] : model.named_linears()) slots[name] = slot;
  std::string widest;
  int64_t width = 0;
  for (const std::string& name : select_target_modules(model, lora)) {
    const int64_t side = std::max(slots.at(name)->in_features(), slots.at(name)->out_features());
    if (side > width) std::tie(widest, width) = std::make_pair(name, side);
  }
  if (lora.r <= width) return;
  throw_error(ErrorKind::kConfig,
              "is " + std::to_string(lora.r) + ", wider than every projection it adapts (the " +
                  "widest, " + widest + ", has " + std::to_string(slots.at(widest)->in_features()) +
                  " inputs and " + std::to_string(slots.at(widest)->out_features()) +
                  " outputs); a rank above min(inputs, outputs) adds nothing",
              {.field = "adapter.r"});
}

}  // namespace

c10::Device resolve_device(const std::string& name) {
  const bool have_cuda = at::hasCUDA() && at::getNumGPUs() > 0;
  if (name == "auto") return have_cuda ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (name == "cpu") return c10::kCPU;
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(name);
  } catch (const std::exception&) {
    throw_error(ErrorKind::kConfig, "not a device: '" + name + "' (auto, cpu, cuda or cuda:N)",
                {.field = "model.device"});
  }
  const int64_t index = device.has_index() ? device.index() : 0;
  if (device.is_cuda() && (!have_cuda || index >= at::getNumGPUs())) {
    throw_error(ErrorKind::kConfig,
                "this machine has no " + name + " (" +
                    std::to_string(have_cuda ? at::getNumGPUs() : 0) +
                    " CUDA devices); use model.device=cpu or auto",
                {.field = "model.device"});
  }
  if (device.is_cuda()) return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  return device;
}

at::ScalarType resolve_dtype(const std::string& name, const std::string& field) {
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  if (name == "float32") return at::kFloat;
  throw_error(ErrorKind::kConfig, "unknown dtype '" + name + "' (bfloat16, float16, float32)",
              {.field = field});
}

LoraConfig lora_config_of(const Recipe& recipe) {
  const auto& a = recipe.adapter;
  LoraConfig config;
  config.r = a.r;
  config.alpha = a.alpha;
  config.dropout = a.dropout;
  config.rslora = a.rslora;
  config.dtype = resolve_dtype(a.dtype, "adapter.dtype");
  config.target_modules = a.target_modules;
  config.target_regex = a.target_regex;
  return config;
}

TrainingModel build_training_model(const Recipe& recipe, ShardedLoad* sharded,
                                   const std::function<void(CausalLM&)>& prepare_base) {
  TrainingModel out;
  out.device = resolve_device(recipe.model.device);
  out.dtype = resolve_dtype(recipe.model.dtype, "model.dtype");
  out.model_dir = resolve_model_dir(recipe.model.path);
  out.lora = lora_config_of(recipe);
  out.model = recipe.model.synthetic
                  ? synthetic_base(recipe, out.device, out.dtype, sharded)
                  : load_base(recipe, out.model_dir, out.device, out.dtype, sharded);
  if (prepare_base) prepare_base(*out.model);
  if (recipe.model.embeddings_on_host) {
    if (out.device.is_cpu()) {
      log::info(
          "model.embeddings_on_host: the model is on the cpu, where the embedding table is "
          "in host memory anyway; nothing changes");
    } else {
      const at::Tensor& table = out.model->model->embed_tokens;
      log::info("model.embeddings_on_host: the embedding table (", table.nbytes() / (1 << 20),
                " MiB) stays in host memory; each batch's rows are "
                "gathered there and copied to ",
                out.device.str());
    }
  }
  if (!recipe.adapter.init_from.empty()) {
    if (recipe.adapter.type == "qalora") {
      throw_error(ErrorKind::kUnsupported, "adapter.init_from holds LoRA adapters only",
                  {.field = "adapter.init_from"});
    }
    LoadedAdapter loaded = load_peft_adapter(recipe.adapter.init_from);
    // The file decides the adapter's shape; the recipe decides how it trains.
    loaded.config.dropout = recipe.adapter.dropout;
    loaded.config.dtype = out.lora.dtype;
    out.lora = loaded.config;
    out.adapters = attach_peft_adapter(*out.model, loaded);
  } else if (recipe.adapter.type == "qalora") {
    check_rank_fits_targets(*out.model, out.lora);
    out.qalora_group_size = recipe.quantization.group_size;
    out.adapters = apply_qalora(*out.model, out.lora, out.qalora_group_size, recipe.training.seed);
  } else {
    check_rank_fits_targets(*out.model, out.lora);
    out.adapters = apply_lora(*out.model, out.lora, recipe.training.seed);
  }
  return out;
}

}  // namespace qtrain

#include "models/quantized_loader.h"

#include "core/text.h"

#include "core/error.h"
#include "core/log.h"
#include "formats/bnb/bnb_checkpoint.h"
#include "formats/safetensors/safetensors.h"
#include "models/hf_loader.h"
#include "models/quantized_linear_slot.h"
#include "models/sharded_load.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <filesystem>
#include <set>

namespace qtrain {

bool is_skipped_module(const std::string& module, const std::vector<std::string>& skip_modules) {
  for (const std::string& skip : skip_modules) {
    if (module == skip) return true;
    if (module.size() > skip.size() &&
        module.compare(module.size() - skip.size(), skip.size(), skip) == 0 &&
        module[module.size() - skip.size() - 1] == '.') {
      return true;
    }
  }
  return false;
}

bool is_quantized_projection(const std::string& name, const std::vector<int64_t>& shape,
                             const std::vector<std::string>& skip_modules) {
  if (!ends_with(name, ".weight") || shape.size() != 2) return false;
  const std::string module = name.substr(0, name.size() - 7);
  return !ends_with(module, "embed_tokens") && !is_skipped_module(module, skip_modules);
}

ModelConfig read_model_dir_config(const std::string& dir) {
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  if (!std::filesystem::exists(config_path)) {
    throw_error(ErrorKind::kIo, "not a model directory: config.json is missing", {.file = dir});
  }
  return ModelConfig::from_file(config_path);
}

at::Tensor read_projection_weight(const CheckpointReader& checkpoint, const std::string& dir,
                                  const std::string& name, int64_t in, int64_t out) {
  const std::string weight_name = name + ".weight";
  if (!checkpoint.contains(weight_name)) {
    throw_error(ErrorKind::kShape, "tensor missing from the checkpoint",
                {.file = dir, .tensor = weight_name});
  }
  const TensorInfo& info = checkpoint.info(weight_name);
  if (info.shape != std::vector<int64_t>{out, in}) {
    throw_error(ErrorKind::kShape,
                "checkpoint has a different shape than the model's [" + std::to_string(out) + ", " +
                    std::to_string(in) + "]",
                {.file = checkpoint.file_of(weight_name), .tensor = weight_name});
  }
  if (!at::isFloatingType(info.scalar_type)) {
    throw_error(ErrorKind::kShape, "expected a floating-point weight, found " + info.dtype,
                {.file = checkpoint.file_of(weight_name), .tensor = weight_name});
  }
  at::Tensor weight = checkpoint.tensor(weight_name);
  require_finite_weight(weight, checkpoint.file_of(weight_name), weight_name);
  return weight;
}

namespace {

// The tensors a quantized load allocates in full: with a pre-quantized base everything but its
// 4-bit weights; otherwise everything but the projections that are read and quantized one by one.
void check_dense_tensor_shapes(const ModelConfig& config, const CheckpointReader& checkpoint,
                               const std::string& dir, bool prequantized,
                               const std::set<std::string>& bnb_modules,
                               const std::vector<std::string>& skip_modules) {
  auto bnb_module_of = [&](const std::string& name) {
    const size_t at = name.find(".weight");
    return at != std::string::npos && bnb_modules.count(name.substr(0, at)) > 0;
  };
  check_checkpoint_shapes(
      config, checkpoint, dir,
      [&](const TensorSpec& spec) {
        if (!prequantized) return !is_quantized_projection(spec.name, spec.shape, skip_modules);
        return !bnb_module_of(spec.name);
      },
      bnb_module_of);
}

}  // namespace

at::Tensor read_projection_bias(const CheckpointReader& checkpoint, const std::string& dir,
                                const std::string& name, const at::TensorOptions& options,
                                std::set<std::string>& consumed) {
  const std::string bias_name = name + ".bias";
  if (!checkpoint.contains(bias_name)) {
    throw_error(ErrorKind::kShape, "tensor missing from the checkpoint",
                {.file = dir, .tensor = bias_name});
  }
  const at::Tensor stored = checkpoint.tensor(bias_name);
  require_finite_weight(stored, checkpoint.file_of(bias_name), bias_name);
  at::Tensor bias = stored.to(options);
  checkpoint.evict(bias_name);
  consumed.insert(bias_name);
  return bias;
}

std::shared_ptr<CausalLM> load_quantized_causal_lm(const std::string& dir,
                                                   const QuantizedLoadOptions& options) {
  options.quant.validate();
  ModelConfig config = read_model_dir_config(dir);
  CheckpointReader checkpoint = CheckpointReader::open_dir(dir);
  const auto dense_options = at::TensorOptions().dtype(options.dtype).device(options.device);
  std::set<std::string> consumed;
  int64_t quantized_bytes = 0;

  torch::NoGradGuard no_grad;
  // A directory saved by transformers + bitsandbytes (or by qtrain in that layout) already holds
  // 4-bit weights: they load as they are, without a dense round trip.
  const auto prequantized = read_bnb_quantization_config(dir);
  std::set<std::string> bnb_modules;
  if (prequantized) {
    for (const auto& module : bnb_4bit_modules(checkpoint)) bnb_modules.insert(module);
    const QuantConfig stored = prequantized->quant_config();
    if (stored.type != options.quant.type || stored.blocksize != options.quant.blocksize ||
        stored.double_quant != options.quant.double_quant) {
      // The weights are used as stored; re-quantizing them would only add error.
      log::warn(dir, " is already quantized by bitsandbytes (", quant_type_name(stored.type),
                ", blocksize ", stored.blocksize, stored.double_quant ? ", double quant" : "",
                ") and loads as it is; the requested ", quant_type_name(options.quant.type),
                ", blocksize ", options.quant.blocksize,
                options.quant.double_quant ? ", double quant" : "", " does not apply");
    }
  }
  check_dense_tensor_shapes(config, checkpoint, dir, prequantized.has_value(), bnb_modules,
                            options.skip_modules);
  auto load_bias = [&](const std::string& name) {
    return read_projection_bias(checkpoint, dir, name, dense_options, consumed);
  };
  // A 4-bit weight as the file stores it.
  auto read_prequantized = [&](const std::string& name, int64_t in, int64_t out) {
    QuantizedTensor weight = read_bnb_4bit_weight(checkpoint, name, options.device);
    if (weight.shape != std::vector<int64_t>{out, in}) {
      throw_error(ErrorKind::kShape,
                  "quant_state shape differs from the model's [" + std::to_string(out) + ", " +
                      std::to_string(in) + "]",
                  {.file = checkpoint.file_of(name + ".weight"), .tensor = name + ".weight"});
    }
    // Its block scales: a NaN or Inf there spreads over the whole block.
    require_finite_weight(weight.block_absmax(), checkpoint.file_of(name + ".weight"),
                          name + ".weight");
    return weight;
  };
  // Reads (and quantizes) the weight of projection `name`, releasing the source pages.
  auto produce = [&](const std::string& name, int64_t in, int64_t out) {
    QuantizedTensor weight =
        prequantized
            ? read_prequantized(name, in, out)
            : quantize(read_projection_weight(checkpoint, dir, name, in, out).to(options.device),
                       options.quant);
    if (!prequantized) checkpoint.evict(name + ".weight");
    quantized_bytes += weight.nbytes();
    return weight;
  };
  auto mark_consumed = [&](const std::string& name) {
    const std::string prefix = name + ".weight";
    if (!prequantized) {
      consumed.insert(prefix);
      return;
    }
    for (const auto& entry : checkpoint.names()) {
      if (entry.compare(0, prefix.size(), prefix) == 0) consumed.insert(entry);
    }
  };
  LinearFactory make = [&](const std::string& name, int64_t in, int64_t out,
                           bool bias) -> std::shared_ptr<LinearSlot> {
    const bool dense =
        prequantized ? bnb_modules.count(name) == 0 : is_skipped_module(name, options.skip_modules);
    if (dense) return std::make_shared<DenseLinear>(in, out, bias, dense_options);
    mark_consumed(name);
    at::Tensor b = bias ? load_bias(name) : at::Tensor();
    if (options.sharded != nullptr && ShardedLoad::shards(name)) {
      return options.sharded->defer(name, in, out, std::move(b),
                                    [&produce, name, in, out] { return produce(name, in, out); });
    }
    return std::make_shared<QuantizedLinearSlot>(produce(name, in, out), std::move(b));
  };
  auto model = std::make_shared<CausalLM>(config, dense_options, make, options.embeddings);
  if (options.sharded != nullptr) options.sharded->finish();
  load_hf_weights(*model, checkpoint, dir, consumed);
  log::info("loaded ", config.model_type, " from ", dir, ": ", consumed.size(), " tensors ",
            prequantized ? "pre-quantized (bitsandbytes layout)" : "quantized", " to ",
            quant_type_name(prequantized ? prequantized->type : options.quant.type), " (",
            quantized_bytes / (1 << 20), " MiB)");
  return model;
}

}  // namespace qtrain

#include "models/synthetic_model.h"

#include "core/error.h"
#include "core/log.h"
#include "core/text.h"
#include "models/device_memory.h"
#include "models/hf_names.h"
#include "models/linear.h"
#include "models/quantized_linear_slot.h"
#include "models/quantized_loader.h"
#include "models/quantized_memory.h"
#include "models/sharded_load.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/csrc/autograd/grad_mode.h>

namespace qtrain {
namespace {

// N(0, std) of `shape` on `device`, from the device's generator reseeded for this tensor alone
// (by its name), so the values do not depend on the order tensors are made in.
at::Tensor draw(const std::string& name, at::IntArrayRef shape, const at::TensorOptions& options,
                uint64_t seed, double std) {
  // A private generator of the device's kind: the global one's state is left alone.
  at::Generator gen = at::globalContext().defaultGenerator(options.device()).clone();
  gen.set_current_seed(seed ^ fnv1a_64(name));
  at::Tensor values = at::empty(shape, options.dtype(at::kFloat));
  values.normal_(0.0, std, gen);
  return values.to(options.dtype());
}

int64_t synthetic_model_bytes(const ModelConfig& config, const SyntheticModelOptions& options) {
  if (options.quant) {
    const ModelBytes bytes =
        quantized_model_bytes(config, *options.quant, options.skip_modules, options.dtype);
    // A sharded load keeps 1/N of the decoder projections (nearly all the quantized bytes).
    const int64_t ranks = options.sharded != nullptr ? options.sharded->world_size() : 1;
    return bytes.quantized / ranks + bytes.unquantized;
  }
  int64_t elements = 0;
  for (const TensorSpec& spec : hf_tensor_specs(config)) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    elements += numel;
  }
  return elements * static_cast<int64_t>(c10::elementSize(options.dtype));
}

// What the device holds: the model, less a host embedding table.
int64_t synthetic_device_bytes(const ModelConfig& config, const SyntheticModelOptions& options) {
  int64_t bytes = synthetic_model_bytes(config, options);
  if (options.embeddings == EmbeddingPlacement::kHost && !options.device.is_cpu()) {
    bytes -= config.vocab_size * config.hidden_size *
             static_cast<int64_t>(c10::elementSize(options.dtype));
  }
  return bytes;
}

// Built from the config alone, nothing else bounds the model's size: an absurd config.json
// (hidden_size: 1000000000) would otherwise end in the allocator, naming no setting.
void check_fits_device(const ModelConfig& config, const SyntheticModelOptions& options) {
  const int64_t needed = synthetic_device_bytes(config, options);
  const int64_t available = device_memory_bytes(options.device);
  if (available <= 0 || needed <= available) return;
  throw_error(ErrorKind::kConfig,
              "a synthetic model of this config needs " + gib_text(double(needed)) + " on " +
                  options.device.str() + ", which has " + gib_text(double(available)) +
                  " (vocab_size " + std::to_string(config.vocab_size) + ", hidden_size " +
                  std::to_string(config.hidden_size) + ", intermediate_size " +
                  std::to_string(config.intermediate_size) + ", num_hidden_layers " +
                  std::to_string(config.num_hidden_layers) + ")");
}

}  // namespace

std::shared_ptr<CausalLM> make_synthetic_causal_lm(const ModelConfig& config,
                                                   const SyntheticModelOptions& options) {
  torch::NoGradGuard no_grad;
  const auto dense = at::TensorOptions().dtype(options.dtype).device(options.device);
  if (options.quant) options.quant->validate();
  check_fits_device(config, options);
  int64_t quantized_bytes = 0;
  LinearFactory make = [&](const std::string& name, int64_t in, int64_t out,
                           bool bias) -> std::shared_ptr<LinearSlot> {
    if (!options.quant || is_skipped_module(name, options.skip_modules)) {
      return std::make_shared<DenseLinear>(in, out, bias, dense);
    }
    auto produce = [&, name, in, out] {
      QuantizedTensor weight = quantize(
          draw(name + ".weight", {out, in}, dense, options.seed, options.init_std), *options.quant);
      quantized_bytes += weight.nbytes();
      return weight;
    };
    at::Tensor b =
        bias ? draw(name + ".bias", {out}, dense, options.seed, options.init_std) : at::Tensor();
    if (options.sharded != nullptr && ShardedLoad::shards(name)) {
      return options.sharded->defer(name, in, out, std::move(b), produce);
    }
    return std::make_shared<QuantizedLinearSlot>(produce(), std::move(b));
  };
  auto model = std::make_shared<CausalLM>(config, dense, make, options.embeddings);
  if (options.sharded != nullptr) options.sharded->finish();
  // What the factory left dense (embeddings, norms, skipped projections) is uninitialised.
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    at::Tensor& param = item.value();
    if (ends_with(name, "norm.weight")) {
      param.fill_(1.0);
    } else {
      // On the parameter's own device: a host embedding table never passes through the device.
      param.copy_(
          draw(name, param.sizes(), dense.device(param.device()), options.seed, options.init_std));
    }
  }
  log::info("synthetic ", config.model_type, " model: ", config.num_hidden_layers,
            " layers, hidden ", config.hidden_size, ", on ", options.device.str(), " (seed ",
            options.seed, ", ", quantized_bytes / (1 << 20), " MiB quantized)");
  return model;
}

}  // namespace qtrain

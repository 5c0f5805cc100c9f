#include "models/int4_loader.h"

#include "core/error.h"
#include "core/log.h"
#include "formats/safetensors/safetensors.h"
#include "models/hf_loader.h"
#include "models/int4_linear_slot.h"
#include "models/quantized_loader.h"
#include "quant/int4_group.h"

#include <torch/csrc/autograd/grad_mode.h>

#include <set>

namespace qtrain {

std::shared_ptr<CausalLM> load_int4_causal_lm(const std::string& dir,
                                              const Int4LoadOptions& options) {
  if (!is_supported_int4_group_size(options.group_size)) {
    throw_error(ErrorKind::kConfig,
                "int4 group size must be 32, 64 or 128, got " + std::to_string(options.group_size),
                {.field = "group_size"});
  }
  ModelConfig config = read_model_dir_config(dir);
  CheckpointReader checkpoint = CheckpointReader::open_dir(dir);
  // Projections are read and checked one by one below; what is allocated in full is checked now.
  check_checkpoint_shapes(config, checkpoint, dir, [&](const TensorSpec& spec) {
    return !is_quantized_projection(spec.name, spec.shape, options.skip_modules);
  });
  const auto dense_options = at::TensorOptions().dtype(options.dtype).device(options.device);
  std::set<std::string> consumed;
  int64_t quantized_count = 0, quantized_bytes = 0;

  torch::NoGradGuard no_grad;
  LinearFactory make = [&](const std::string& name, int64_t in, int64_t out,
                           bool bias) -> std::shared_ptr<LinearSlot> {
    if (is_skipped_module(name, options.skip_modules)) {
      return std::make_shared<DenseLinear>(in, out, bias, dense_options);
    }
    const std::string weight_name = name + ".weight";
    at::Tensor dense = read_projection_weight(checkpoint, dir, name, in, out);
    Int4GroupTensor weight = [&] {
      try {
        return quantize_int4_group(dense.to(options.device), options.group_size);
      } catch (const Error& e) {
        throw e.with_context({.file = checkpoint.file_of(weight_name), .tensor = weight_name});
      }
    }();
    dense = at::Tensor();
    checkpoint.evict(weight_name);
    consumed.insert(weight_name);
    ++quantized_count;
    quantized_bytes += weight.nbytes();
    return std::make_shared<Int4LinearSlot>(
        std::move(weight),
        bias ? read_projection_bias(checkpoint, dir, name, dense_options, consumed) : at::Tensor());
  };
  auto model = std::make_shared<CausalLM>(config, dense_options, make, options.embeddings);
  load_hf_weights(*model, checkpoint, dir, consumed);
  log::info("loaded ", config.model_type, " from ", dir, ": ", quantized_count,
            " projections quantized to int4 (group ", options.group_size, ", ",
            quantized_bytes >> 10, " KiB)");
  return model;
}

}  // namespace qtrain

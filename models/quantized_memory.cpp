#include "models/quantized_memory.h"

#include "core/dtype.h"
#include "core/text.h"
#include "models/hf_names.h"
#include "models/quantized_loader.h"
#include "quant/memory.h"

namespace qtrain {
namespace {

const std::string kWeightSuffix = ".weight";

}  // namespace

ModelBytes quantized_model_bytes(const ModelConfig& config, const QuantConfig& quant,
                                 const std::vector<std::string>& skip_modules,
                                 at::ScalarType compute_dtype) {
  quant.validate();
  const auto dense_bytes = static_cast<int64_t>(element_size(compute_dtype));
  ModelBytes bytes;
  for (const TensorSpec& spec : hf_tensor_specs(config)) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    const bool linear_weight = spec.shape.size() == 2 && ends_with(spec.name, kWeightSuffix) &&
                               spec.name != "model.embed_tokens.weight";
    const std::string module = spec.name.substr(0, spec.name.size() - kWeightSuffix.size());
    if (linear_weight && !is_skipped_module(module, skip_modules)) {
      bytes.quantized += quantized_bytes(numel, quant).total();
      bytes.quantized_params += numel;
    } else {
      bytes.unquantized += numel * dense_bytes;
      bytes.unquantized_params += numel;
    }
  }
  return bytes;
}

}  // namespace qtrain

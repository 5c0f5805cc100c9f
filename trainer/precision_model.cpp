#include "trainer/precision_model.h"

#include "core/error.h"
#include "models/config.h"
#include "models/hf_loader.h"
#include "models/int4_loader.h"
#include "models/llama.h"
#include "models/quantized_loader.h"
#include "models/quantized_memory.h"
#include "trainer/recipe/recipe.h"

#include <ATen/ATen.h>

namespace qtrain {

const std::vector<std::string>& model_precisions() {
  static const std::vector<std::string> names = {"fp32", "bf16", "fp16", "int8",
                                                 "nf4",  "fp4",  "int4"};
  return names;
}

PrecisionOptions precision_options_of(const QuantizationSection& quantization,
                                      const std::string& precision) {
  PrecisionOptions options;
  options.skip_modules = quantization.skip_modules;
  if (precision == quantization.type && precision != "int4") {
    options.blocksize = quantization.blocksize;
    options.double_quant = quantization.double_quant;
  }
  if (precision == "int4" && quantization.type == "int4") {
    options.int4_group_size = quantization.group_size;
  }
  return options;
}

PrecisionModel load_model_at_precision(const std::string& dir, const std::string& precision,
                                       at::ScalarType compute_dtype, c10::Device device,
                                       int64_t int4_group_size) {
  return load_model_at_precision(dir, precision, compute_dtype, device,
                                 PrecisionOptions{.int4_group_size = int4_group_size});
}

PrecisionModel load_model_at_precision(const std::string& dir, const std::string& precision,
                                       at::ScalarType compute_dtype, c10::Device device,
                                       const PrecisionOptions& precision_options) {
  PrecisionModel out;
  const ModelConfig config = ModelConfig::from_file(dir + "/config.json");
  const std::vector<std::string>& skip = precision_options.skip_modules;
  const int64_t int4_group_size = precision_options.int4_group_size;
  if (precision == "fp32" || precision == "bf16" || precision == "fp16") {
    const at::ScalarType stored = precision == "fp32"   ? at::kFloat
                                  : precision == "bf16" ? at::kBFloat16
                                                        : at::kHalf;
    out.model = load_causal_lm(dir, {.dtype = compute_dtype, .device = device});
    int64_t params = 0;
    at::NoGradGuard no_grad;
    for (auto& p : out.model->parameters()) {
      params += p.numel();
      // The stored precision's values, computed in the compute dtype.
      if (stored != compute_dtype) p.copy_(p.to(stored));
    }
    out.weight_bytes = params * static_cast<int64_t>(c10::elementSize(stored));
    return out;
  }
  if (precision == "int4") {
    out.model = load_int4_causal_lm(dir, {.dtype = compute_dtype,
                                          .device = device,
                                          .group_size = int4_group_size,
                                          .skip_modules = skip});
    // Codes (4 bits), a float32 scale and zero per group; the rest dense in the compute dtype.
    QuantConfig nf4;
    const ModelBytes rest = quantized_model_bytes(config, nf4, skip, at::kBFloat16);
    out.weight_bytes =
        rest.unquantized + rest.quantized_params / 2 + rest.quantized_params / int4_group_size * 8;
    return out;
  }
  if (precision != "int8" && precision != "nf4" && precision != "fp4") {
    std::string known;
    for (const auto& p : model_precisions()) known += (known.empty() ? "" : ", ") + p;
    throw_error(ErrorKind::kUsage, "unknown precision '" + precision + "' (" + known + ")");
  }
  QuantizedLoadOptions options;
  options.dtype = compute_dtype;
  options.device = device;
  options.quant.type = quant_type_from_name(precision);
  options.quant.blocksize = precision_options.blocksize;
  options.quant.double_quant = precision != "int8" && precision_options.double_quant;
  options.skip_modules = skip;
  out.model = load_quantized_causal_lm(dir, options);
  // The dense rest counted in bf16, as a GPU run holds it.
  out.weight_bytes = quantized_model_bytes(config, options.quant, skip, at::kBFloat16).total();
  return out;
}

}  // namespace qtrain

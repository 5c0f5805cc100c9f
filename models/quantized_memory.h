// Bytes of a Llama-family model whose linear layers are quantized, from its config alone: the
// storage that load_quantized_causal_lm will hold, before any weight is read.
#pragma once

#include "models/config.h"
#include "quant/quantized_tensor.h"

#include <ATen/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

struct ModelBytes {
  int64_t quantized = 0;           // quantized linear weights: codes, scales, code tables
  int64_t unquantized = 0;         // embeddings, norms, skipped linears, biases (compute dtype)
  int64_t quantized_params = 0;    // elements of the quantized weights
  int64_t unquantized_params = 0;  // elements of everything else

  int64_t total() const { return quantized + unquantized; }
};

// Every 2-D ".weight" of hf_tensor_specs(config) except the token embeddings is a linear weight;
// it is quantized unless its module is named by `skip_modules` (is_skipped_module rules).
// Throws Error(kConfig) for an invalid quant config.
ModelBytes quantized_model_bytes(const ModelConfig& config, const QuantConfig& quant,
                                 const std::vector<std::string>& skip_modules = {"lm_head"},
                                 at::ScalarType compute_dtype = at::kBFloat16);

}  // namespace qtrain

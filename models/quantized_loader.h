// Quantize-on-load: an HF BF16/FP16/FP32 checkpoint becomes a model whose projections are frozen
// quantized slots, streaming one tensor at a time from the mmap'd shards: read, quantize on the
// target device, release the source pages, move on. Host memory never holds the dense model.
#pragma once

#include "models/llama.h"
#include "quant/quantized_tensor.h"

#include <c10/core/Device.h>

#include <memory>
#include <string>
#include <vector>

namespace qtrain {

struct QuantizedLoadOptions {
  at::ScalarType dtype = at::kBFloat16;  // compute dtype: activations, embeddings, norms, biases
  c10::Device device = c10::kCPU;
  QuantConfig quant;
  // Projections kept dense in the compute dtype, like bitsandbytes' llm_int8_skip_modules: an
  // entry matches a module name exactly or as its last dotted components ("lm_head",
  // "mlp.down_proj", "model.layers.0.self_attn.q_proj").
  std::vector<std::string> skip_modules = {"lm_head"};
};

// True when `module` (an HF module name) is named by `skip_modules`.
bool is_skipped_module(const std::string& module, const std::vector<std::string>& skip_modules);

// A directory whose config.json carries a bitsandbytes 4-bit quantization_config loads its 4-bit
// weights as they are (options.quant and skip_modules are then the file's business).
std::shared_ptr<CausalLM> load_quantized_causal_lm(const std::string& dir,
                                                   const QuantizedLoadOptions& options);

}  // namespace qtrain

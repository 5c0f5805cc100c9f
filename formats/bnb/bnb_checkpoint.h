// Reading pre-quantized bitsandbytes 4-bit model directories (`*-bnb-4bit`, reference/formats.md
// §1.4): the 4-bit weights of one (ours or transformers') as QuantizedTensors, and its dense
// tensors. Writing one from a dense HF directory is models/bnb_4bit_save.h.
//
// Reading a directory:
//   CheckpointReader ckpt = CheckpointReader::open_dir(dir);
//   auto qc = read_bnb_quantization_config(dir);            // nullopt: not a bnb 4-bit model
//   for (const std::string& module : bnb_4bit_modules(ckpt))  // "model.layers.0.mlp.up_proj"
//     QuantizedTensor w = read_bnb_4bit_weight(ckpt, module, device);
//   for (const std::string& name : bnb_dense_tensor_names(ckpt))  // norms, embeddings, biases
//     at::Tensor t = ckpt.tensor(name);
#pragma once

#include "formats/bnb/quant_state.h"
#include "formats/safetensors/safetensors.h"
#include "quant/quantized_tensor.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

// The quantization_config of `dir`/config.json, or nullopt when it has none. Throws
// Error(kConfig) naming the field when it has one that is not a bnb 4-bit config.
std::optional<BnbQuantizationConfig> read_bnb_quantization_config(const std::string& dir);

// Modules whose weight is stored in bnb 4-bit form (those with a
// `<module>.weight.quant_state.bitsandbytes__*` entry), sorted.
std::vector<std::string> bnb_4bit_modules(const CheckpointReader& checkpoint);

// One module's weight, copied out of the mapping onto `device`. Throws Error(kFormat) naming the
// shard and tensor for a missing or malformed entry.
QuantizedTensor read_bnb_4bit_weight(const CheckpointReader& checkpoint, const std::string& module,
                                     c10::Device device = c10::kCPU);

// Every 4-bit weight of the checkpoint by module name.
std::map<std::string, QuantizedTensor> read_bnb_4bit_weights(const CheckpointReader& checkpoint,
                                                             c10::Device device = c10::kCPU);

// The tensors that are not part of a 4-bit weight (embeddings, norms, biases, lm_head, ...),
// sorted: they load as ordinary tensors. Throws Error(kFormat) for a state entry (`.absmax`,
// `.quant_map`, ...) whose module has no quant_state.
std::vector<std::string> bnb_dense_tensor_names(const CheckpointReader& checkpoint);

}  // namespace qtrain

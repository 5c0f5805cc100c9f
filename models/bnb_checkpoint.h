// Pre-quantized bitsandbytes 4-bit model directories (`*-bnb-4bit`, reference/formats.md §1.4),
// both ways: write one from a dense HF directory, so transformers + bitsandbytes load it as it
// is, and read the 4-bit weights of one (ours or transformers') into QuantizedTensors.
//
// Reading a directory:
//   CheckpointReader ckpt = CheckpointReader::open_dir(dir);
//   auto qc = read_bnb_quantization_config(dir);            // nullopt: not a bnb 4-bit model
//   for (const std::string& module : bnb_4bit_modules(ckpt))  // "model.layers.0.mlp.up_proj"
//     QuantizedTensor w = read_bnb_4bit_weight(ckpt, module, device);
//   for (const std::string& name : bnb_dense_tensor_names(ckpt))  // norms, embeddings, biases
//     at::Tensor t = ckpt.tensor(name);
#pragma once

#include "core/safetensors.h"
#include "quant/bnb_format.h"
#include "quant/quantized_tensor.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

struct BnbSaveOptions {
  // Linear modules kept dense, matched exactly or as trailing dotted components ("lm_head",
  // "mlp.down_proj"). Anything beyond lm_head is written to llm_int8_skip_modules so that
  // transformers leaves it dense too.
  std::vector<std::string> skip_modules = {"lm_head"};
  c10::Device device = c10::kCPU;  // where quantize runs
  uint64_t max_shard_bytes = 5'000'000'000ULL;
};

// Writes a bitsandbytes 4-bit model directory `out_dir` (which must not exist or be empty) from
// the dense HF directory `src_hf_dir`: every Linear weight (2-D `<module>.weight` other than the
// embeddings and the skipped modules) quantized with `quant` (nf4/fp4) and stored as bnb's state
// entries; all other tensors copied in their dtype; config.json with a quantization_config for
// `compute_dtype`; tokenizer and generation files copied. Streams one tensor at a time from the
// mmap'd shards; host memory holds only the 4-bit results. The directory appears complete or
// not at all (staged next to it, then renamed).
// Throws Error(kIo) for an unusable output, Error(kConfig) for a bad config, and whatever reading
// the source throws.
void save_bnb_4bit_checkpoint(const std::string& src_hf_dir, const std::string& out_dir,
                              const QuantConfig& quant, at::ScalarType compute_dtype,
                              const BnbSaveOptions& options = {});

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

// Quantize-on-load: an HF BF16/FP16/FP32 checkpoint becomes a model whose projections are frozen
// quantized slots, streaming one tensor at a time from the mmap'd shards: read, quantize on the
// target device, release the source pages, move on. Host memory never holds the dense model.
#pragma once

#include "formats/safetensors/safetensors.h"
#include "models/llama.h"
#include "quant/quantized_tensor.h"

#include <c10/core/Device.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

namespace qtrain {

class ShardedLoad;

struct QuantizedLoadOptions {
  at::ScalarType dtype = at::kBFloat16;  // compute dtype: activations, embeddings, norms, biases
  c10::Device device = c10::kCPU;
  QuantConfig quant;
  // Projections kept dense in the compute dtype, like bitsandbytes' llm_int8_skip_modules: an
  // entry matches a module name exactly or as its last dotted components ("lm_head",
  // "mlp.down_proj", "model.layers.0.self_attn.q_proj").
  std::vector<std::string> skip_modules = {"lm_head"};
  // kHost: the embedding table is read straight into host memory (model.embeddings_on_host).
  EmbeddingPlacement embeddings = EmbeddingPlacement::kDevice;
  // distributed.strategy shard: the decoder projections are read and quantized by their owning
  // rank and arrive here as shards (models/sharded_load.h); null: every projection, whole.
  ShardedLoad* sharded = nullptr;
};

// True when `module` (an HF module name) is named by `skip_modules`.
bool is_skipped_module(const std::string& module, const std::vector<std::string>& skip_modules);

// True when `name` (an HF tensor name) is a projection weight the quantized formats quantize:
// 2-D `<module>.weight`, not the token embeddings, not a skipped module.
bool is_quantized_projection(const std::string& name, const std::vector<int64_t>& shape,
                             const std::vector<std::string>& skip_modules);

// Steps shared by the quantize-on-load paths (this one and int4_loader.h).
// The config of a model directory; Error(kIo) naming the directory when config.json is missing.
ModelConfig read_model_dir_config(const std::string& dir);
// The dense weight [out, in] of projection `name` ("<name>.weight") as stored (mmap-backed on
// CPU). Error(kShape) naming the tensor when it is missing, mis-shaped or not floating point. The
// caller quantizes it, then evicts its pages and records it as consumed.
at::Tensor read_projection_weight(const CheckpointReader& checkpoint, const std::string& dir,
                                  const std::string& name, int64_t in, int64_t out);
// The bias [out] of projection `name` in `options`; its pages are evicted and it is recorded in
// `consumed`. Error(kShape) naming it when missing.
at::Tensor read_projection_bias(const CheckpointReader& checkpoint, const std::string& dir,
                                const std::string& name, const at::TensorOptions& options,
                                std::set<std::string>& consumed);

// A directory whose config.json carries a bitsandbytes 4-bit quantization_config loads its 4-bit
// weights as they are (options.quant and skip_modules are then the file's business).
std::shared_ptr<CausalLM> load_quantized_causal_lm(const std::string& dir,
                                                   const QuantizedLoadOptions& options);

}  // namespace qtrain

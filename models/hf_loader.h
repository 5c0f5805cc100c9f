// Loads a Hugging Face checkpoint directory (config.json + safetensors, sharded or not) into a
// CausalLM, streaming one tensor at a time from the mmap'd shards to the target device.
#pragma once

#include "formats/safetensors/safetensors.h"
#include "models/hf_names.h"
#include "models/llama.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <memory>
#include <set>
#include <string>

namespace qtrain {

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // compute dtype of the loaded parameters
  c10::Device device = c10::kCPU;
  // kHost: the embedding table is read straight into host memory (model.embeddings_on_host).
  EmbeddingPlacement embeddings = EmbeddingPlacement::kDevice;
};

// Copies every parameter of `model` from `checkpoint` (names as transformers writes them).
// A tensor the model needs but the checkpoint lacks, one the checkpoint has but the model does
// not know, or one whose shape differs is an Error(kShape) that names it (all of them, listed);
// one holding a NaN or an Inf is an Error(kFormat) naming it.
// `source` names the directory in messages. `consumed` names checkpoint tensors already used
// elsewhere (the quantized loader's weights): they are neither loaded nor reported as
// unexpected. Each tensor's mapped pages are evicted once copied, so resident memory stays near
// one tensor.
void load_hf_weights(CausalLM& model, const CheckpointReader& checkpoint, const std::string& source,
                     const std::set<std::string>& consumed = {});

// Before a model of `config` is allocated: every tensor of hf_tensor_specs(config) that
// `loaded_dense` selects (those the loader allocates in full rather than reading one by one)
// must be in the checkpoint with the config's shape, and the checkpoint must hold nothing else
// (but what `read_elsewhere` names, e.g. bitsandbytes state entries). So a config.json whose sizes
// disagree with its weights (hidden_size: 1000000000) is the Error(kShape) load_hf_weights would
// give, naming the tensor, instead of an allocation that cannot succeed. Same order as there:
// missing tensors, then unexpected ones (each listed), then shapes.
void check_checkpoint_shapes(const ModelConfig& config, const CheckpointReader& checkpoint,
                             const std::string& source,
                             const std::function<bool(const TensorSpec&)>& loaded_dense,
                             const std::function<bool(const std::string&)>& read_elsewhere = {});

// Error(kFormat) naming `file` and tensor `name` when `weight` holds a NaN or an Inf.
void require_finite_weight(const at::Tensor& weight, const std::string& file,
                           const std::string& name);

// config.json -> CausalLM with weights from the directory's safetensors.
std::shared_ptr<CausalLM> load_causal_lm(const std::string& dir, const LoadOptions& options = {});

}  // namespace qtrain

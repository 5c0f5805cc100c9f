// Loads a Hugging Face checkpoint directory (config.json + safetensors, sharded or not) into a
// CausalLM, streaming one tensor at a time from the mmap'd shards to the target device.
#pragma once

#include "formats/safetensors/safetensors.h"
#include "models/llama.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <set>
#include <string>

namespace qtrain {

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // compute dtype of the loaded parameters
  c10::Device device = c10::kCPU;
};

// Copies every parameter of `model` from `checkpoint` (names as transformers writes them).
// A tensor the model needs but the checkpoint lacks, one the checkpoint has but the model does
// not know, or one whose shape differs is an Error(kShape) that names it (all of them, listed).
// `source` names the directory in messages. `consumed` names checkpoint tensors already used
// elsewhere (the quantized loader's weights): they are neither loaded nor reported as
// unexpected. Each tensor's mapped pages are evicted once copied, so resident memory stays near
// one tensor.
void load_hf_weights(CausalLM& model, const CheckpointReader& checkpoint, const std::string& source,
                     const std::set<std::string>& consumed = {});

// config.json -> CausalLM with weights from the directory's safetensors.
std::shared_ptr<CausalLM> load_causal_lm(const std::string& dir, const LoadOptions& options = {});

}  // namespace qtrain

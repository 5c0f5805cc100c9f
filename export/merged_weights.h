// The weights of base + adapter as one dense model, produced one tensor at a time, so an export
// never holds more than a tensor or two of a 70B model.
//
// A projection W [out, in] with a LoRA adapter becomes W + scaling * B A; with a QA-LoRA adapter
// (A [r, in/g] sees group means) W + D expanded over each group, D = scaling * B A / g.
//
// Which W (BaseWeights):
//   kOriginal  the base's own weights re-read from disk (BF16 for most checkpoints): what PEFT's
//              merge_and_unload on a full-precision base gives and what the QLoRA paper deploys;
//              the quantization error of training is gone. The default.
//   kTrained   the base exactly as the adapter saw it while training: quantized and dequantized
//              again with the run's settings (nf4/fp4/int8/int4). The merged model then computes
//              what the trained model computed, up to the output dtype's rounding.
// A bitsandbytes 4-bit base directory has no original weights: both modes dequantize it.
#pragma once

#include "export/export_source.h"
#include "models/config.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace qtrain {

class CheckpointReader;
struct QuantizedTensor;

enum class BaseWeights { kOriginal, kTrained };
BaseWeights base_weights_from_name(const std::string& name);  // original | trained; kUsage

class MergedWeights {
 public:
  // Opens the base checkpoint and checks every adapter tensor against it (Error(kShape) naming the
  // adapter tensor for a module the base lacks or a shape that does not fit). Throws
  // Error(kConfig) for kTrained on a bare LoRA adapter directory (no recipe says how the base was
  // quantized).
  MergedWeights(const ExportSource& source, BaseWeights mode);
  ~MergedWeights();

  const ModelConfig& config() const { return config_; }
  // config.json of the base without its quantization_config.
  const nlohmann::json& config_json() const { return config_json_; }
  const std::string& model_dir() const { return model_dir_; }
  // One line for logs and docs: which base weights the merge used.
  const std::string& description() const { return description_; }

  // Every tensor of the dense merged model, sorted by name (HF names).
  const std::vector<std::string>& names() const { return names_; }
  const std::vector<int64_t>& shape(const std::string& name) const;
  // The dtype the base stores the tensor in (a 4-bit weight's original dtype).
  at::ScalarType stored_dtype(const std::string& name) const;
  // True for projections that carry an adapter.
  bool has_adapter(const std::string& name) const;

  // The merged tensor on the CPU: float32 for projections that carry an adapter or were
  // dequantized, else a copy of the stored tensor. The source's mapped pages are released.
  at::Tensor tensor(const std::string& name) const;
  // The base tensor before merging (float32 for dequantized/re-quantized projections).
  at::Tensor base_tensor(const std::string& name) const;
  // scaling * B A: float32 [out, in] for LoRA, [out, in/g] for QA-LoRA (not yet divided by g, not
  // expanded). Throws Error(kInternal) when `name` has no adapter.
  at::Tensor adapter_product(const std::string& name) const;
  int64_t qalora_group_size() const { return qalora_group_size_; }

 private:
  struct Entry {
    std::vector<int64_t> shape;
    at::ScalarType dtype;
    bool bnb_4bit = false;  // stored as a bitsandbytes 4-bit weight
    bool requantize = false;
  };
  const Entry& entry(const std::string& name) const;

  std::string model_dir_;
  ModelConfig config_;
  nlohmann::json config_json_;
  std::string description_;
  std::unique_ptr<CheckpointReader> reader_;
  std::map<std::string, Entry> entries_;
  std::vector<std::string> names_;
  std::map<std::string, std::map<std::string, at::Tensor>> adapter_;  // by weight name
  double scaling_ = 1.0;
  int64_t qalora_group_size_ = 0;
  TrainedQuantization trained_;
};

}  // namespace qtrain

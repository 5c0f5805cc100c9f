#include "export/merged_weights.h"

#include "core/error.h"
#include "core/json_file.h"
#include "core/shape_string.h"
#include "formats/bnb/bnb_checkpoint.h"
#include "formats/safetensors/safetensors.h"
#include "models/quantized_loader.h"
#include "quant/int4_group.h"
#include "quant/quantized_tensor.h"

#include <ATen/ATen.h>

namespace qtrain {

BaseWeights base_weights_from_name(const std::string& name) {
  if (name == "original") return BaseWeights::kOriginal;
  if (name == "trained") return BaseWeights::kTrained;
  throw_error(ErrorKind::kUsage, "--base-weights is original or trained, not '" + name + "'");
}

MergedWeights::~MergedWeights() = default;

MergedWeights::MergedWeights(const ExportSource& source, BaseWeights mode)
    : model_dir_(source.model_dir), qalora_group_size_(source.qalora_group_size) {
  config_json_ = read_json_file(model_dir_ + "/config.json");
  config_ = ModelConfig::from_json(config_json_, model_dir_ + "/config.json");
  const auto prequantized = read_bnb_quantization_config(model_dir_);
  config_json_.erase("quantization_config");
  reader_ = std::make_unique<CheckpointReader>(CheckpointReader::open_dir(model_dir_));

  if (source.trained_on) {
    trained_ = *source.trained_on;
  } else if (qalora_group_size_ > 0) {
    trained_ = {.type = "int4", .group_size = qalora_group_size_};
  } else if (mode == BaseWeights::kTrained && !prequantized) {
    throw_error(ErrorKind::kConfig,
                "--base-weights trained needs the run directory (its recipe says how the base "
                "was quantized), not a bare adapter",
                {.file = source.adapter_dir});
  }
  const bool requantize = mode == BaseWeights::kTrained && !prequantized && trained_.type != "none";

  if (prequantized) {
    for (const std::string& module : bnb_4bit_modules(*reader_)) {
      const QuantizedTensor w = read_bnb_4bit_weight(*reader_, module);
      entries_[module + ".weight"] = {w.shape, w.dtype, true, false};
    }
    for (const std::string& name : bnb_dense_tensor_names(*reader_)) {
      const TensorInfo& info = reader_->info(name);
      entries_[name] = {info.shape, info.scalar_type, false, false};
    }
    description_ = "the bitsandbytes 4-bit base dequantized (" + model_dir_ +
                   " holds no full-precision weights)";
  } else {
    for (const std::string& name : reader_->names()) {
      const TensorInfo& info = reader_->info(name);
      const bool quantized = requantize && at::isFloatingType(info.scalar_type) &&
                             is_quantized_projection(name, info.shape, trained_.skip_modules);
      entries_[name] = {info.shape, info.scalar_type, false, quantized};
    }
    description_ = requantize ? "the base as trained: " + model_dir_ + " quantized to " +
                                    trained_.type + " and dequantized"
                              : "the original weights of " + model_dir_;
  }
  for (const auto& [name, e] : entries_) names_.push_back(name);

  scaling_ = source.adapter.config.scaling();
  const std::string adapter_file = source.adapter.weights_file;
  for (const auto& [module, tensors] : source.adapter.tensors) {
    const std::string weight = module + ".weight";
    auto it = entries_.find(weight);
    if (it == entries_.end() || it->second.shape.size() != 2) {
      throw_error(
          ErrorKind::kShape, "the base has no projection " + module,
          {.file = adapter_file, .tensor = "base_model.model." + module + ".lora_A.weight"});
    }
    const int64_t out = it->second.shape[0], in = it->second.shape[1];
    const at::Tensor& a = tensors.at("lora_A.weight");
    const at::Tensor& b = tensors.at("lora_B.weight");
    int64_t a_in = in;
    if (qalora_group_size_ > 0) {
      if (in % qalora_group_size_ != 0) {
        throw_error(ErrorKind::kShape,
                    "in_features " + std::to_string(in) +
                        " is not a multiple of the QA-LoRA group " +
                        std::to_string(qalora_group_size_),
                    {.file = adapter_file, .tensor = module});
      }
      a_in = in / qalora_group_size_;
    }
    if (a.size(1) != a_in || b.size(0) != out) {
      throw_error(ErrorKind::kShape,
                  "lora_A " + shape_string(a.sizes().vec()) + " / lora_B " +
                      shape_string(b.sizes().vec()) + " do not fit the base's " +
                      shape_string(it->second.shape) + " (an adapter for another model?)",
                  {.file = adapter_file, .tensor = "base_model.model." + module});
    }
    adapter_[weight] = tensors;
  }
}

const MergedWeights::Entry& MergedWeights::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    throw_error(ErrorKind::kInternal, "no such tensor in the merged model", {.tensor = name});
  }
  return it->second;
}

const std::vector<int64_t>& MergedWeights::shape(const std::string& name) const {
  return entry(name).shape;
}

at::ScalarType MergedWeights::stored_dtype(const std::string& name) const {
  return entry(name).dtype;
}

bool MergedWeights::has_adapter(const std::string& name) const {
  return adapter_.count(name) != 0;
}

at::Tensor MergedWeights::base_tensor(const std::string& name) const {
  const Entry& e = entry(name);
  if (e.bnb_4bit) {
    return read_bnb_4bit_weight(*reader_, name.substr(0, name.size() - 7)).dequantize(at::kFloat);
  }
  at::Tensor stored = reader_->tensor(name);
  if (!e.requantize) return stored;
  at::Tensor dequantized;
  if (trained_.type == "int4") {
    dequantized = quantize_int4_group(stored, trained_.group_size).dequantize(at::kFloat);
  } else {
    QuantConfig quant;
    quant.type = quant_type_from_name(trained_.type);
    quant.blocksize = trained_.blocksize;
    quant.double_quant = trained_.double_quant;
    dequantized = quantize(stored, quant).dequantize(at::kFloat);
  }
  reader_->evict(name);
  return dequantized;
}

at::Tensor MergedWeights::adapter_product(const std::string& name) const {
  auto it = adapter_.find(name);
  if (it == adapter_.end()) {
    throw_error(ErrorKind::kInternal, "no adapter on this tensor", {.tensor = name});
  }
  const at::Tensor a = it->second.at("lora_A.weight").to(at::kFloat);
  const at::Tensor b = it->second.at("lora_B.weight").to(at::kFloat);
  return at::matmul(b, a).mul_(scaling_);
}

at::Tensor MergedWeights::tensor(const std::string& name) const {
  at::Tensor base = base_tensor(name);
  if (!has_adapter(name)) {
    if (entry(name).bnb_4bit || entry(name).requantize) return base;
    // Copied out so the mapped pages can leave the resident set now, not when the file closes.
    at::Tensor owned = base.clone();
    reader_->evict(name);
    return owned;
  }
  at::Tensor delta = adapter_product(name);
  if (qalora_group_size_ > 0) {
    delta = delta.div_(static_cast<double>(qalora_group_size_))
                .repeat_interleave(qalora_group_size_, /*dim=*/1);
  }
  at::Tensor merged = base.to(at::kFloat).add(delta);
  if (!entry(name).bnb_4bit) reader_->evict(name);
  return merged;
}

}  // namespace qtrain

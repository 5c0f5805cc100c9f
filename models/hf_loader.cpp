#include "models/hf_loader.h"

#include "core/error.h"
#include "core/finite.h"
#include "core/log.h"
#include "core/shape_string.h"
#include "models/hf_names.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <filesystem>
#include <set>

namespace qtrain {
namespace {

// Tensors some checkpoints carry that hold nothing the model needs.
bool ignorable(const std::string& name) {
  static const std::string kSuffix = "rotary_emb.inv_freq";
  return name.size() >= kSuffix.size() &&
         name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0;
}

std::string list_names(const std::vector<std::string>& names) {
  std::string out;
  const size_t shown = std::min<size_t>(names.size(), 8);
  for (size_t i = 0; i < shown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > shown) out += " (+" + std::to_string(names.size() - shown) + " more)";
  return out;
}

[[noreturn]] void throw_missing(const std::vector<std::string>& missing,
                                const std::string& source) {
  throw_error(ErrorKind::kShape,
              std::to_string(missing.size()) +
                  " tensor(s) missing from the checkpoint: " + list_names(missing),
              {.file = source, .tensor = missing.front()});
}

[[noreturn]] void throw_unexpected(const std::vector<std::string>& unexpected,
                                   const std::string& model_type, const std::string& source) {
  throw_error(ErrorKind::kShape,
              std::to_string(unexpected.size()) + " tensor(s) the " + model_type +
                  " model does not have: " + list_names(unexpected),
              {.file = source, .tensor = unexpected.front()});
}

void check_shape(const CheckpointReader& checkpoint, const std::string& name,
                 at::IntArrayRef expected) {
  const TensorInfo& info = checkpoint.info(name);
  if (at::IntArrayRef(info.shape) != expected) {
    throw_error(ErrorKind::kShape,
                "checkpoint has shape " + shape_string(info.shape) + ", the model expects " +
                    shape_string(expected),
                {.file = checkpoint.file_of(name), .tensor = name});
  }
}

}  // namespace

void require_finite_weight(const at::Tensor& weight, const std::string& file,
                           const std::string& name) {
  if (!all_finite(weight)) {
    throw_error(ErrorKind::kFormat, "holds NaN or Inf values", {.file = file, .tensor = name});
  }
}

void check_checkpoint_shapes(const ModelConfig& config, const CheckpointReader& checkpoint,
                             const std::string& source,
                             const std::function<bool(const TensorSpec&)>& loaded_dense,
                             const std::function<bool(const std::string&)>& read_elsewhere) {
  std::vector<const TensorSpec*> present;
  std::vector<std::string> missing, unexpected;
  std::set<std::string> spec_names;
  const std::vector<TensorSpec> specs = hf_tensor_specs(config);
  for (const TensorSpec& spec : specs) {
    spec_names.insert(spec.name);
    if (!loaded_dense(spec)) continue;
    if (checkpoint.contains(spec.name)) {
      present.push_back(&spec);
    } else {
      missing.push_back(spec.name);
    }
  }
  for (const auto& name : checkpoint.names()) {
    if (spec_names.count(name) || ignorable(name) || (read_elsewhere && read_elsewhere(name)))
      continue;
    if (config.tie_word_embeddings && name == "lm_head.weight") continue;
    unexpected.push_back(name);
  }
  // In load_hf_weights' order, so that a checkpoint fails with the same error either way.
  if (!missing.empty()) throw_missing(missing, source);
  if (!unexpected.empty()) throw_unexpected(unexpected, config.model_type, source);
  for (const TensorSpec* spec : present) check_shape(checkpoint, spec->name, spec->shape);
}

void load_hf_weights(CausalLM& model, const CheckpointReader& checkpoint, const std::string& source,
                     const std::set<std::string>& consumed) {
  const bool tied = model.config().tie_word_embeddings;
  std::vector<std::pair<std::string, at::Tensor>> wanted;
  std::set<std::string> wanted_names;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (tied && item.key() == "lm_head.weight") continue;  // shares model.embed_tokens.weight
    wanted.emplace_back(item.key(), item.value());
    wanted_names.insert(item.key());
  }
  std::vector<std::string> missing, unexpected;
  for (const auto& [name, param] : wanted) {
    if (!checkpoint.contains(name)) missing.push_back(name);
  }
  for (const auto& name : checkpoint.names()) {
    if (wanted_names.count(name) || consumed.count(name) || ignorable(name)) continue;
    if (tied && name == "lm_head.weight") continue;
    unexpected.push_back(name);
  }
  if (!missing.empty()) throw_missing(missing, source);
  if (!unexpected.empty()) throw_unexpected(unexpected, model.config().model_type, source);
  torch::NoGradGuard no_grad;
  for (const auto& [name, param] : wanted) {
    check_shape(checkpoint, name, param.sizes());
    const TensorInfo& info = checkpoint.info(name);
    if (!at::isFloatingType(info.scalar_type)) {
      throw_error(ErrorKind::kShape, "expected a floating-point tensor, found " + info.dtype,
                  {.file = checkpoint.file_of(name), .tensor = name});
    }
    const at::Tensor stored = checkpoint.tensor(name);
    require_finite_weight(stored, checkpoint.file_of(name), name);
    param.copy_(stored);
    checkpoint.evict(name);
  }
}

std::shared_ptr<CausalLM> load_causal_lm(const std::string& dir, const LoadOptions& options) {
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  if (!std::filesystem::exists(config_path)) {
    throw_error(ErrorKind::kIo, "not a model directory: config.json is missing", {.file = dir});
  }
  ModelConfig config = ModelConfig::from_file(config_path);
  CheckpointReader checkpoint = CheckpointReader::open_dir(dir);
  check_checkpoint_shapes(config, checkpoint, dir, [](const TensorSpec&) { return true; });
  auto model = std::make_shared<CausalLM>(
      config, at::TensorOptions().dtype(options.dtype).device(options.device), LinearFactory{},
      options.embeddings);
  load_hf_weights(*model, checkpoint, dir);
  log::debug("loaded ", config.model_type, " model from ", dir);
  return model;
}

}  // namespace qtrain

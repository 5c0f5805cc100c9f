#include "models/bnb_checkpoint.h"

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_file.h"
#include "core/log.h"
#include "core/staging_dir.h"
#include "core/text.h"
#include "models/config.h"
#include "models/model_files.h"
#include "models/quantized_loader.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <ftw.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A floating Linear weight that gets quantized (is_quantized_projection).
bool is_quantized_linear(const std::string& name, const TensorInfo& info,
                         const std::vector<std::string>& skip_modules) {
  return at::isFloatingType(info.scalar_type) &&
         is_quantized_projection(name, info.shape, skip_modules);
}

// llm_int8_skip_modules for the config: null when only lm_head is skipped (transformers'
// default), else the list itself, which replaces that default.
std::optional<std::vector<std::string>> config_skip_modules(const std::vector<std::string>& skip) {
  if (skip == std::vector<std::string>{"lm_head"}) return std::nullopt;
  return skip;
}

// Returns the number of weights quantized.
int64_t write_bnb_files(const std::string& src_hf_dir, const fs::path& dir,
                        const QuantConfig& quant, at::ScalarType compute_dtype,
                        const BnbSaveOptions& options) {
  const fs::path src(src_hf_dir);
  json config = read_json_file((src / "config.json").string());
  ModelConfig::from_json(config, (src / "config.json").string());  // validates
  if (config.contains("quantization_config")) {
    throw_error(ErrorKind::kConfig, "the source is already quantized",
                {.file = (src / "config.json").string(), .field = "quantization_config"});
  }
  config["quantization_config"] =
      bnb_quantization_config_json(quant, compute_dtype, config_skip_modules(options.skip_modules));

  const CheckpointReader checkpoint = CheckpointReader::open_dir(src_hf_dir);
  NamedTensors tensors;
  int64_t quantized = 0;
  for (const std::string& name : checkpoint.names()) {
    const TensorInfo& info = checkpoint.info(name);
    if (!is_quantized_linear(name, info, options.skip_modules)) {
      tensors.emplace_back(name, checkpoint.tensor(name));  // a view of the mapping: no copy
      continue;
    }
    const QuantizedTensor weight = quantize(checkpoint.tensor(name).to(options.device), quant);
    checkpoint.evict(name);
    for (auto& entry : to_bnb_entries(name.substr(0, name.size() - 7), weight)) {
      tensors.push_back(std::move(entry));
    }
    ++quantized;
  }
  if (quantized == 0) {
    throw_error(ErrorKind::kConfig, "no Linear weight to quantize", {.file = src_hf_dir});
  }

  ShardOptions shards;
  shards.max_shard_bytes = options.max_shard_bytes;
  write_checkpoint(dir.string(), tensors, shards);
  write_file_atomically((dir / "config.json").string(), config.dump(2) + "\n");
  copy_model_side_files(src, dir);
  return quantized;
}

}  // namespace

void save_bnb_4bit_checkpoint(const std::string& src_hf_dir, const std::string& out_dir,
                              const QuantConfig& quant, at::ScalarType compute_dtype,
                              const BnbSaveOptions& options) {
  quant.validate();
  fs::path target = fs::absolute(out_dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  try {
    if (fs::exists(target) && (!fs::is_directory(target) || !fs::is_empty(target))) {
      throw_error(ErrorKind::kIo, "output exists and is not an empty directory",
                  {.file = target.string()});
    }
    fs::create_directories(target.parent_path());
    const fs::path staging = make_staging_dir(target);
    try {
      const int64_t quantized = write_bnb_files(src_hf_dir, staging, quant, compute_dtype, options);
      if (fs::exists(target)) fs::remove(target);
      fs::rename(staging, target);
      log::info("wrote ", target.string(), ": ", quantized, " weights in bitsandbytes ",
                quant_type_name(quant.type), " (blocksize ", quant.blocksize,
                quant.double_quant ? ", double quant" : "", ")");
    } catch (...) {
      remove_tree(staging);
      throw;
    }
  } catch (const fs::filesystem_error& e) {
    const std::string file = e.path1().empty() ? target.string() : e.path1().string();
    throw_error(ErrorKind::kIo, "cannot write the model: " + e.code().message(), {.file = file});
  }
}

std::optional<BnbQuantizationConfig> read_bnb_quantization_config(const std::string& dir) {
  const fs::path path = fs::path(dir) / "config.json";
  const json config = read_json_file(path);
  if (!config.contains("quantization_config")) return std::nullopt;
  return parse_bnb_quantization_config(config["quantization_config"], path.string());
}

std::vector<std::string> bnb_4bit_modules(const CheckpointReader& checkpoint) {
  std::set<std::string> modules;
  for (const std::string& name : checkpoint.names()) {
    if (auto module = bnb_quant_state_module(name)) modules.insert(*module);
  }
  return {modules.begin(), modules.end()};
}

QuantizedTensor read_bnb_4bit_weight(const CheckpointReader& checkpoint, const std::string& module,
                                     c10::Device device) {
  std::vector<std::string> used;
  auto lookup = [&](const std::string& name) {
    if (!checkpoint.contains(name)) return at::Tensor();
    used.push_back(name);
    return checkpoint.tensor(name);
  };
  // The shard holding the weight, or (when the packed weight itself is missing) its quant_state,
  // so that every error names a file.
  std::string source;
  for (const char* suffix : {".weight", ".weight.quant_state.bitsandbytes__nf4",
                             ".weight.quant_state.bitsandbytes__fp4"}) {
    if (checkpoint.contains(module + suffix)) {
      source = checkpoint.file_of(module + suffix);
      break;
    }
  }
  const QuantizedTensor mapped = from_bnb_entries(module, lookup, source);

  // Own copies, so that the result does not pin the mapping.
  auto copy = [&](const at::Tensor& t) { return t.to(t.options().device(device), false, true); };
  QuantizedTensor q = mapped;
  q.data = copy(mapped.data);
  q.code = copy(mapped.code);
  if (mapped.absmax.defined()) q.absmax = copy(mapped.absmax);
  if (mapped.nested) {
    q.nested->codes = copy(mapped.nested->codes);
    q.nested->absmax = copy(mapped.nested->absmax);
    q.nested->code = copy(mapped.nested->code);
  }
  for (const std::string& name : used) checkpoint.evict(name);
  return q;
}

std::map<std::string, QuantizedTensor> read_bnb_4bit_weights(const CheckpointReader& checkpoint,
                                                             c10::Device device) {
  std::map<std::string, QuantizedTensor> out;
  for (const std::string& module : bnb_4bit_modules(checkpoint)) {
    out.emplace(module, read_bnb_4bit_weight(checkpoint, module, device));
  }
  return out;
}

std::vector<std::string> bnb_dense_tensor_names(const CheckpointReader& checkpoint) {
  const std::vector<std::string> modules = bnb_4bit_modules(checkpoint);
  const std::set<std::string> quantized(modules.begin(), modules.end());
  std::vector<std::string> dense;
  for (const std::string& name : checkpoint.names()) {
    const size_t pos = name.rfind(".weight");
    const bool owned = pos != std::string::npos && quantized.count(name.substr(0, pos)) &&
                       (pos + 7 == name.size() || is_bnb_state_entry(name));
    if (owned) continue;
    if (is_bnb_state_entry(name)) {
      throw_error(ErrorKind::kFormat,
                  "bitsandbytes state entry without a quant_state entry for its weight",
                  {.file = checkpoint.file_of(name), .tensor = name});
    }
    dense.push_back(name);
  }
  return dense;
}

}  // namespace qtrain

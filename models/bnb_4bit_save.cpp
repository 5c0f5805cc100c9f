#include "models/bnb_4bit_save.h"

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_file.h"
#include "core/log.h"
#include "core/staging_dir.h"
#include "formats/bnb/quant_state.h"
#include "formats/safetensors/safetensors.h"
#include "models/config.h"
#include "models/model_files.h"
#include "models/quantized_loader.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <filesystem>

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

}  // namespace qtrain

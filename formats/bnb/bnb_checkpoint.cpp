#include "formats/bnb/bnb_checkpoint.h"

#include "core/error.h"
#include "core/json_file.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <set>

namespace qtrain {
namespace fs = std::filesystem;
using nlohmann::json;

std::optional<BnbQuantizationConfig> read_bnb_quantization_config(const std::string& dir) {
  const fs::path path = fs::path(dir) / "config.json";
  const json config = read_json_file(path.string());
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

#include "peft/peft_files.h"

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/finite.h"
#include "core/json_file.h"
#include "core/shape_string.h"
#include "formats/safetensors/safetensors.h"
#include "models/int4_linear_slot.h"
#include "peft/lora_linear.h"
#include "peft/peft_config_json.h"
#include "peft/qalora_linear.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <filesystem>
#include <set>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kPrefix = "base_model.model.";
const char* const kAdapterTensorNames[] = {"lora_A.weight", "lora_B.weight"};

std::string last_component(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

json target_modules_json(const NamedAdapters& adapters, const LoraConfig& config) {
  if (!config.target_regex.empty()) return config.target_regex;
  bool dotted_entries = false;
  for (const auto& entry : config.target_modules)
    dotted_entries |= entry.find('.') != std::string::npos;
  std::set<std::string> names;
  for (const auto& [module, adapter] : adapters) {
    names.insert(dotted_entries ? module : last_component(module));
  }
  return json(std::vector<std::string>(names.begin(), names.end()));
}

// "base_model.model.<module>.lora_A.weight" -> {module, "lora_A.weight"}.
std::pair<std::string, std::string> split_key(const std::string& key, const std::string& file) {
  for (const char* tensor_name : kAdapterTensorNames) {
    const std::string suffix = std::string(".") + tensor_name;
    if (key.rfind(kPrefix, 0) == 0 && key.size() > kPrefix.size() + suffix.size() &&
        key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0) {
      return {key.substr(kPrefix.size(), key.size() - kPrefix.size() - suffix.size()), tensor_name};
    }
  }
  throw_error(ErrorKind::kUnsupported,
              "not a LoRA tensor: expected base_model.model.<module>.lora_A.weight or "
              ".lora_B.weight (DoRA, LoRA biases, embedding LoRA and modules_to_save are not "
              "supported)",
              {.file = file, .tensor = key});
}

void check_rank(const std::string& key, const at::Tensor& t, int64_t rank_dim, int64_t r,
                const std::string& file) {
  if (t.dim() != 2) {
    throw_error(ErrorKind::kShape, "expected a 2-D tensor, got shape " + shape_string(t.sizes()),
                {.file = file, .tensor = key});
  }
  if (t.size(rank_dim) != r) {
    throw_error(ErrorKind::kShape,
                "shape " + shape_string(t.sizes()) +
                    " does not have rank r = " + std::to_string(r) + " from adapter_config.json",
                {.file = file, .tensor = key});
  }
}

}  // namespace

void save_peft_adapter(const std::string& dir, const NamedAdapters& adapters,
                       const LoraConfig& config, const std::string& base_model_name_or_path,
                       at::ScalarType file_dtype, const json& extra_config) {
  if (adapters.empty()) throw_error(ErrorKind::kInternal, "no adapters to save", {.file = dir});
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw_error(ErrorKind::kIo, "cannot create directory: " + ec.message(), {.file = dir});

  NamedTensors tensors;
  for (const auto& [module, adapter] : adapters) {
    for (const auto& [name, tensor] : adapter->adapter_tensors()) {
      tensors.emplace_back(kPrefix + module + "." + name,
                           tensor.detach().to(at::kCPU, file_dtype).contiguous());
    }
  }
  std::sort(tensors.begin(), tensors.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  write_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});

  json j = peft_config_json(config, target_modules_json(adapters, config), base_model_name_or_path);
  for (const auto& [key, value] : extra_config.items()) j[key] = value;
  write_file_atomically(dir + "/adapter_config.json", dump_peft_config(j));
}

namespace {

// use_qalora must be a boolean (null: false); with it, qalora_group_size a positive integer.
void read_qalora_fields(LoadedAdapter& out, const std::string& config_path) {
  const nlohmann::json& raw = out.raw_config;
  if (!raw.contains("use_qalora") || raw["use_qalora"].is_null()) return;
  if (!raw["use_qalora"].is_boolean()) {
    throw_error(ErrorKind::kFormat,
                "use_qalora must be true or false, got " + raw["use_qalora"].dump(),
                {.file = config_path, .field = "use_qalora"});
  }
  out.use_qalora = raw["use_qalora"].get<bool>();
  if (!out.use_qalora) return;
  const nlohmann::json group = raw.value("qalora_group_size", nlohmann::json());
  if (!group.is_number_integer() || group.get<int64_t>() <= 0) {
    throw_error(ErrorKind::kFormat,
                "use_qalora needs a positive qalora_group_size, got " + group.dump(),
                {.file = config_path, .field = "qalora_group_size"});
  }
  out.qalora_group_size = group.get<int64_t>();
}

}  // namespace

LoadedAdapter load_peft_adapter(const std::string& dir) {
  if (!fs::is_directory(dir)) {
    throw_error(ErrorKind::kIo, "adapter directory does not exist", {.file = dir});
  }
  const std::string config_path = dir + "/adapter_config.json";
  const std::string weights_path = dir + "/adapter_model.safetensors";
  if (!fs::exists(config_path)) {
    throw_error(ErrorKind::kIo, "missing adapter_config.json", {.file = config_path});
  }
  if (!fs::exists(weights_path)) {
    if (fs::exists(dir + "/adapter_model.bin")) {
      throw_error(ErrorKind::kUnsupported,
                  "pickled adapter_model.bin is not read; convert it to safetensors (e.g. "
                  "PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True))",
                  {.file = dir + "/adapter_model.bin"});
    }
    throw_error(ErrorKind::kIo, "missing adapter_model.safetensors", {.file = weights_path});
  }

  LoadedAdapter out;
  out.raw_config = read_json_file(config_path, "the adapter config");
  out.config = lora_config_from_peft_json(out.raw_config, config_path);
  if (out.raw_config.contains("base_model_name_or_path") &&
      out.raw_config["base_model_name_or_path"].is_string()) {
    out.base_model_name_or_path = out.raw_config["base_model_name_or_path"].get<std::string>();
  }
  out.weights_file = weights_path;
  read_qalora_fields(out, config_path);

  auto file = SafetensorsFile::open(weights_path);
  std::set<at::ScalarType> dtypes;
  for (const auto& key : file->names()) {
    auto [module, name] = split_key(key, weights_path);
    at::Tensor t = file->tensor(key).clone();  // owned: the file may be replaced later
    check_rank(key, t, name == "lora_A.weight" ? 0 : 1, out.config.r, weights_path);
    // Else a trained-on NaN would be blamed on the data or the learning rate.
    if (!all_finite(t)) {
      throw_error(ErrorKind::kFormat, "holds NaN or Inf values",
                  {.file = weights_path, .tensor = key});
    }
    dtypes.insert(t.scalar_type());
    out.tensors[module][name] = std::move(t);
  }
  if (out.tensors.empty()) {
    throw_error(ErrorKind::kShape, "the adapter holds no LoRA tensors", {.file = weights_path});
  }
  for (const auto& [module, named] : out.tensors) {
    for (const char* tensor_name : kAdapterTensorNames) {
      if (!named.count(tensor_name)) {
        throw_error(ErrorKind::kShape, "missing; LoRA needs both lora_A and lora_B",
                    {.file = weights_path, .tensor = kPrefix + module + "." + tensor_name});
      }
    }
  }
  out.config.dtype = dtypes.size() == 1 ? *dtypes.begin() : at::kFloat;
  if (!at::isFloatingType(out.config.dtype)) {
    throw_error(ErrorKind::kFormat, "LoRA tensors must be floating point", {.file = weights_path});
  }
  if (out.config.target_modules.empty() && out.config.target_regex.empty()) {
    for (const auto& [module, named] : out.tensors) out.config.target_modules.push_back(module);
  }
  return out;
}

NamedAdapters attach_peft_adapter(CausalLM& model, const LoadedAdapter& adapter) {
  const bool qalora = adapter.use_qalora;
  const int64_t group = adapter.qalora_group_size;
  std::map<std::string, std::shared_ptr<LinearSlot>> slots;
  for (auto& [name, slot] : model.named_linears()) slots[name] = slot;

  // Check everything first, so a failure leaves the model untouched.
  for (const auto& [module, named] : adapter.tensors) {
    const std::string key_prefix = kPrefix + module + ".";
    auto it = slots.find(module);
    if (it == slots.end()) {
      throw_error(ErrorKind::kShape, "the model has no projection named " + module,
                  {.file = adapter.weights_file, .tensor = key_prefix + "lora_A.weight"});
    }
    if (std::dynamic_pointer_cast<AdapterSlot>(it->second)) {
      throw_error(ErrorKind::kUnsupported, "this projection already carries an adapter",
                  {.file = adapter.weights_file, .tensor = module});
    }
    int64_t a_in = it->second->in_features();
    if (qalora) {
      auto int4 = std::dynamic_pointer_cast<Int4LinearSlot>(it->second);
      if (!int4 || int4->weight().group_size != group) {
        throw_error(ErrorKind::kUnsupported,
                    "a QA-LoRA adapter (group " + std::to_string(group) +
                        ") needs the base quantized to int4 with that group size",
                    {.file = adapter.weights_file, .tensor = module});
      }
      a_in /= group;
    }
    const int64_t r = adapter.config.r;
    const std::pair<const char*, std::vector<int64_t>> expected[] = {
        {"lora_A.weight", {r, a_in}}, {"lora_B.weight", {it->second->out_features(), r}}};
    for (const auto& [name, shape] : expected) {
      const at::Tensor& t = named.at(name);
      if (t.sizes() != at::IntArrayRef(shape)) {
        throw_error(ErrorKind::kShape,
                    "shape " + shape_string(t.sizes()) + " does not fit this model's " +
                        shape_string(shape) + " (adapter made for another model?)",
                    {.file = adapter.weights_file, .tensor = key_prefix + name});
      }
    }
  }

  for (auto& p : model.parameters()) p.requires_grad_(false);
  at::Generator unused_init = at::make_generator<at::CPUGeneratorImpl>(0);
  NamedAdapters adapters;
  for (const auto& [name, slot] : model.named_linears()) {  // named_linears order
    auto found = adapter.tensors.find(name);
    if (found == adapter.tensors.end()) continue;
    std::shared_ptr<AdapterSlot> wrapped;
    if (qalora) {
      wrapped = std::make_shared<QaLoraLinear>(std::dynamic_pointer_cast<Int4LinearSlot>(slot),
                                               adapter.config, group, unused_init);
    } else {
      wrapped = std::make_shared<LoraLinear>(slot, adapter.config, unused_init);
    }
    for (const auto& [tensor_name, value] : found->second) {
      wrapped->load_adapter_tensor(tensor_name, value);
    }
    model.replace_linear(name, wrapped);
    adapters.emplace_back(name, std::move(wrapped));
  }
  return adapters;
}

}  // namespace qtrain

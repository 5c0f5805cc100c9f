#include "trainer/adapter_targets.h"

#include "core/text.h"
#include "models/hf_names.h"

#include <regex>

namespace qtrain {
namespace {

const std::string kWeightSuffix = ".weight";

}  // namespace

std::vector<LinearModule> linear_modules(const ModelConfig& config) {
  std::vector<LinearModule> modules;
  for (const TensorSpec& spec : hf_tensor_specs(config)) {
    if (spec.shape.size() != 2 || !ends_with(spec.name, kWeightSuffix) ||
        spec.name == "model.embed_tokens.weight")
      continue;
    modules.push_back({spec.name.substr(0, spec.name.size() - kWeightSuffix.size()), spec.shape[1],
                       spec.shape[0]});
  }
  return modules;
}

bool is_adapter_target(const std::string& module, const AdapterSection& adapter) {
  if (!adapter.target_regex.empty())
    return std::regex_match(module, std::regex(adapter.target_regex));
  for (const std::string& entry : adapter.target_modules) {
    if (entry == "all-linear") {
      if (module != "lm_head") return true;
    } else if (module == entry || ends_with(module, "." + entry)) {
      return true;
    }
  }
  return false;
}

std::vector<LinearModule> adapter_targets(const ModelConfig& config,
                                          const AdapterSection& adapter) {
  std::vector<LinearModule> targets;
  for (LinearModule& module : linear_modules(config))
    if (is_adapter_target(module.name, adapter)) targets.push_back(std::move(module));
  return targets;
}

}  // namespace qtrain

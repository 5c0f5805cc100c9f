#include "peft/target_modules.h"

#include "core/error.h"

#include <regex>
#include <set>

namespace qtrain {
namespace {

std::string last_component(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

std::string describe_targets(const LoraConfig& config) {
  if (!config.target_regex.empty()) return "target_regex \"" + config.target_regex + "\"";
  std::string out;
  for (const auto& entry : config.target_modules) out += (out.empty() ? "" : ", ") + entry;
  return "target_modules [" + out + "]";
}

}  // namespace

bool module_matches_suffix(const std::string& module, const std::string& entry) {
  if (module == entry) return true;
  return module.size() > entry.size() &&
         module.compare(module.size() - entry.size(), entry.size(), entry) == 0 &&
         module[module.size() - entry.size() - 1] == '.';
}

std::vector<std::string> select_target_modules(const CausalLM& model, const LoraConfig& config) {
  config.validate();
  std::regex pattern;
  const bool use_regex = !config.target_regex.empty();
  if (use_regex) {
    try {
      pattern = std::regex(config.target_regex);
    } catch (const std::regex_error& e) {
      throw_error(ErrorKind::kConfig, "invalid regular expression: " + std::string(e.what()),
                  {.field = "target_regex"});
    }
  }
  const bool all_linear =
      !use_regex && config.target_modules.size() == 1 && config.target_modules[0] == "all-linear";

  std::vector<std::string> selected;
  std::set<std::string> suffixes;
  for (const auto& [name, slot] : model.named_linears()) {
    suffixes.insert(last_component(name));
    bool match = false;
    if (use_regex) {
      match = std::regex_match(name, pattern);
    } else if (all_linear) {
      match = name != "lm_head";
    } else {
      for (const auto& entry : config.target_modules) match |= module_matches_suffix(name, entry);
    }
    if (match) selected.push_back(name);
  }
  if (selected.empty()) {
    std::string known;
    for (const auto& s : suffixes) known += (known.empty() ? "" : ", ") + s;
    throw_error(
        ErrorKind::kConfig,
        describe_targets(config) + " matches no module of the model; its modules end in: " + known,
        {.field = use_regex ? "target_regex" : "target_modules"});
  }
  return selected;
}

}  // namespace qtrain

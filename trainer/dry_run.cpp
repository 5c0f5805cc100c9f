#include "trainer/dry_run.h"

#include "core/error.h"
#include "models/tiny_model.h"
#include "trainer/recipe/known_models.h"

#include <filesystem>
#include <sstream>

namespace qtrain {

ModelConfig recipe_model_config(const Recipe& recipe) {
  if (recipe.model.synthetic && !recipe.model.known_config.empty()) {
    return known_model_config(recipe.model.known_config);
  }
  const std::string& path = recipe.model.path;
  const std::string kBuiltin = "builtin:";
  if (path.rfind(kBuiltin, 0) == 0) return tiny_model_config("llama", path.substr(kBuiltin.size()));
  const std::string config_json = path + "/config.json";
  std::error_code ec;
  if (std::filesystem::is_regular_file(config_json, ec)) return ModelConfig::from_file(config_json);
  if (!recipe.model.known_config.empty()) return known_model_config(recipe.model.known_config);
  throw_error(ErrorKind::kConfig,
              "no config.json in '" + path + "' and no model.known_config to plan with",
              {.file = recipe.source, .field = "model.path"});
}

std::string describe_recipe(const Recipe& recipe, const MemoryEstimate& estimate) {
  std::ostringstream out;
  out << recipe_to_yaml(recipe)
      << "\n# memory estimate per process (trainable parameters: " << estimate.adapter_param_count
      << ")\n";
  std::istringstream table(estimate.to_table());
  for (std::string line; std::getline(table, line);) out << "#   " << line << "\n";
  return out.str();
}

}  // namespace qtrain

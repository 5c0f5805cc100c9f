#include "trainer/recipe/recipe_origins.h"

#include "core/error.h"

namespace qtrain {

void RecipeOrigins::fail(const std::string& key, const std::string& message) const {
  auto it = origins_.find(key);
  if (it == origins_.end()) it = origins_.find(key.substr(0, key.find('.')));
  if (it != origins_.end() && !it->second.override_text.empty()) {
    throw_error(ErrorKind::kConfig,
                message + " (set by override '" + it->second.override_text + "')",
                {.file = source_, .field = key});
  }
  const int64_t line = it == origins_.end() ? -1 : it->second.line;
  throw_error(ErrorKind::kConfig, message, {.file = source_, .field = key, .line = line});
}

}  // namespace qtrain

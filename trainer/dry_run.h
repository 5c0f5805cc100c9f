// What `qtrain --dry-run` prints: the resolved recipe and what it will hold in memory.
#pragma once

#include "models/config.h"
#include "trainer/memory_estimate.h"
#include "trainer/recipe/recipe.h"

#include <string>

namespace qtrain {

// The architecture a recipe trains, without reading weights: builtin:tiny / builtin:micro give
// the tiny llama presets, a directory with config.json gives that file, otherwise
// model.known_config. Throws Error(kConfig) on model.path when none of these applies.
ModelConfig recipe_model_config(const Recipe& recipe);

// recipe_to_yaml(recipe), then the estimate as a commented table in GiB (2 decimals).
std::string describe_recipe(const Recipe& recipe, const MemoryEstimate& estimate);

}  // namespace qtrain

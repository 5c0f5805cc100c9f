// The rules a parsed recipe must satisfy: ranges, allowed names, required keys, and settings
// that contradict each other.
#pragma once

#include "trainer/recipe/recipe.h"
#include "trainer/recipe/recipe_origins.h"

namespace qtrain {

// Throws Error(kConfig) through origins.fail, naming the offending key (the first one checked
// when several contradict each other) and where its value came from.
void validate_recipe(const Recipe& recipe, const RecipeOrigins& origins);

}  // namespace qtrain

// The names a recipe accepts, and the closest one to a name it does not.
#pragma once

#include <string>
#include <vector>

namespace qtrain {

const std::vector<std::string>& recipe_sections();  // "model", ..., "distributed"
const std::vector<std::string>& recipe_keys();      // "model.path", ..., "distributed.backend"

// The known key most likely meant by an unknown one, or "" when none is close. `unknown` is a
// dotted key ("training.lerning_rate" -> "training.lr", through the alias learning_rate) or a
// top-level name ("trainig" -> "training", "lr" -> "training.lr"). Candidates: keys of the same
// section and common aliases from transformers/PEFT/axolotl within a small edit distance, then
// the same field name in another section.
std::string suggest_recipe_key(const std::string& unknown);

// "unknown key 'x' (did you mean 'y'?)", or without the parenthesis when nothing is close.
std::string unknown_key_message(const std::string& unknown);

}  // namespace qtrain

// libFuzzer target: a YAML recipe through the parser and validator. An accepted recipe must
// round-trip: its resolved YAML parses back to an equal recipe.
#include "tests/fuzz/fuzz_support.h"
#include "trainer/recipe/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  qtrain::fuzz::expect_success_or_error([&] {
    const qtrain::Recipe recipe = qtrain::parse_recipe(text, "fuzz.yaml");
    const std::string resolved = qtrain::recipe_to_yaml(recipe);
    try {
      if (qtrain::parse_recipe(resolved, "resolved.yaml") != recipe) {
        qtrain::fuzz::property_failed("resolved recipe parses to a different recipe:\n" + resolved);
      }
    } catch (const qtrain::Error& error) {
      qtrain::fuzz::property_failed(std::string("resolved recipe is refused: ") + error.what() +
                                    "\n" + resolved);
    }
  });
  return 0;
}

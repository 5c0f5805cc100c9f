// qmem: the memory a recipe's run needs, broken down, and whether it fits.
//
//   qmem RECIPE.yaml [section.key=value ...] [--gpu-mem 48G]
//
// Exit codes: 0 (fits, or no budget given), 1 does not fit, 2 bad command line, 3 bad recipe.
#include "tools/cli_main.h"
#include "trainer/memory_plan.h"
#include "trainer/recipe/recipe.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  std::string recipe_path, budget_text;
  std::vector<std::string> overrides;
  CLI::App app{"Prints the memory a qtrain recipe needs and whether it fits a budget.", "qmem"};
  app.add_option("recipe", recipe_path, "recipe file (recipes/*.yaml)")->required();
  app.add_option("overrides", overrides, "recipe overrides: section.key=value");
  app.add_option("--gpu-mem", budget_text, "the memory available, e.g. 48G, 80GiB");
  return qtrain::run_cli("qmem", app, argc, argv, [&] {
    std::optional<int64_t> budget;
    if (!budget_text.empty()) budget = qtrain::parse_memory_size(budget_text);
    const qtrain::Recipe recipe = qtrain::load_recipe(recipe_path, overrides);
    const qtrain::MemoryPlan plan = qtrain::plan_memory(recipe, budget);
    std::fputs(qtrain::describe_memory_plan(recipe, plan).c_str(), stdout);
    return plan.fits ? 0 : 1;
  });
}

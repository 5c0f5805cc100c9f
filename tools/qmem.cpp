// qmem: the memory a recipe's run needs, broken down, and whether it fits.
//
//   qmem RECIPE.yaml [section.key=value ...] [--gpu-mem 48G] [--ranks N]
//
// --ranks N with distributed.strategy shard: what each of N ranks needs (trainer/shard_memory.h);
// the budget is then checked against that.
//
// Exit codes: 0 (fits, or no budget given), 1 does not fit, 2 bad command line, 3 bad recipe.
#include "tools/cli_main.h"
#include "trainer/dry_run.h"
#include "trainer/memory_plan.h"
#include "trainer/recipe/recipe.h"
#include "trainer/shard_memory.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  std::string recipe_path, budget_text;
  std::vector<std::string> overrides;
  int64_t ranks = 0;
  CLI::App app{"Prints the memory a qtrain recipe needs and whether it fits a budget.", "qmem"};
  app.add_option("recipe", recipe_path, "recipe file (recipes/*.yaml)")->required();
  app.add_option("overrides", overrides, "recipe overrides: section.key=value");
  app.add_option("--gpu-mem", budget_text, "the memory available, e.g. 48G, 80GiB");
  app.add_option("--ranks", ranks, "ranks of a distributed.strategy shard job: per-rank figures")
      ->check(CLI::PositiveNumber);
  return qtrain::run_cli("qmem", app, argc, argv, [&] {
    std::optional<int64_t> budget;
    if (!budget_text.empty()) budget = qtrain::parse_memory_size(budget_text);
    const qtrain::Recipe recipe = qtrain::load_recipe(recipe_path, overrides);
    const qtrain::MemoryPlan plan = qtrain::plan_memory(recipe, budget);
    std::fputs(qtrain::describe_memory_plan(recipe, plan).c_str(), stdout);
    if (ranks == 0 || recipe.distributed.strategy != "shard") return plan.fits ? 0 : 1;
    const qtrain::ShardedBaseMemory shard = qtrain::sharded_base_memory(
        recipe, qtrain::recipe_model_config(recipe), plan.estimate, ranks);
    // The runtime share (context, fragmentation margin) stays as planned for the whole base.
    const int64_t needed = plan.needed - plan.estimate.total + shard.total_per_rank;
    std::printf("\n%s  needed per rank (with runtime)           %.2f GiB\n",
                qtrain::describe_sharded_base_memory(shard).c_str(),
                static_cast<double>(needed) / (1 << 30));
    if (!budget) return 0;
    const bool fits = needed <= *budget;
    std::printf("  per rank: %s the %.2f GiB budget (margin %.2f GiB)\n",
                fits ? "fits" : "does not fit", static_cast<double>(*budget) / (1 << 30),
                static_cast<double>(*budget - needed) / (1 << 30));
    return fits ? 0 : 1;
  });
}

// model.dtype auto: bfloat16 where matmuls have bf16 instructions, float32 on other CPUs. The
// CPUID answer is checked against the kernel's own reading of the CPU (/proc/cpuinfo flags).
#include "core/cpu_capabilities.h"
#include "tests/support/test_support.h"
#include "trainer/recipe/recipe.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

namespace qtrain {
namespace {

// The flags of the first processor in /proc/cpuinfo, space-separated with spaces around.
std::string cpuinfo_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) return " " + line.substr(line.find(':') + 1) + " ";
  }
  return "";
}

TEST(AutoDtype, CpuidAgreesWithTheKernelsCpuFlags) {
  const std::string flags = cpuinfo_flags();
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo";
  const bool amx = flags.find(" amx_bf16 ") != std::string::npos &&
                   flags.find(" amx_tile ") != std::string::npos;
  const bool avx512 = flags.find(" avx512_bf16 ") != std::string::npos;
  const std::string found = cpu_bf16_instructions();
  if (amx) {
    EXPECT_EQ(found, "AMX-BF16");
  } else if (avx512) {
    EXPECT_EQ(found, "AVX512-BF16");
  } else {
    EXPECT_EQ(found, "");
  }
}

TEST(AutoDtype, ResolvesOnTheCpuAndStaysResolved) {
  const std::string yaml = R"(model:
  path: builtin:micro
  device: cpu
  dtype: auto
data:
  path: data.jsonl
)";
  const Recipe r = parse_recipe(yaml, "auto.yaml");
  const bool bf16 = !cpu_bf16_instructions().empty();
  EXPECT_EQ(r.model.dtype, bf16 ? "bfloat16" : "float32");
  EXPECT_NE(r.dtype_auto_reason.find(bf16 ? cpu_bf16_instructions() : "without bf16"),
            std::string::npos)
      << r.dtype_auto_reason;
  // The resolved recipe (a run's recipe.yaml) records the dtype that was used.
  const Recipe again = parse_recipe(recipe_to_yaml(r), "resolved.yaml");
  EXPECT_EQ(again.model.dtype, r.model.dtype);
  EXPECT_TRUE(again.dtype_auto_reason.empty());
  EXPECT_TRUE(again == r);
  // Explicit dtypes are left alone.
  const Recipe fp32 = parse_recipe(yaml, "auto.yaml", {"model.dtype=float32"});
  EXPECT_EQ(fp32.model.dtype, "float32");
  EXPECT_TRUE(fp32.dtype_auto_reason.empty());
}

TEST(AutoDtype, IsTheDefaultOfARecipeFileAndAdaptersFollowIt) {
  const std::string yaml = R"(model:
  path: builtin:micro
  device: cpu
data:
  path: data.jsonl
)";
  const Recipe r = parse_recipe(yaml, "plain.yaml");
  const bool bf16 = !cpu_bf16_instructions().empty();
  EXPECT_EQ(r.model.dtype, bf16 ? "bfloat16" : "float32");
  EXPECT_EQ(r.adapter.dtype, r.model.dtype);
  EXPECT_FALSE(r.dtype_auto_reason.empty());
  // On CUDA auto is bfloat16 whatever the host CPU (a dry run of a GPU recipe estimates bf16).
  const Recipe cuda = parse_recipe(yaml, "plain.yaml", {"model.device=cuda"});
  EXPECT_EQ(cuda.model.dtype, "bfloat16");
  EXPECT_EQ(cuda.adapter.dtype, "bfloat16");
  EXPECT_EQ(cuda.dtype_auto_reason, "CUDA");
  // Adapters follow a float32 model, keep bfloat16 for float16 and bfloat16 ones, and an explicit
  // adapter dtype wins.
  EXPECT_EQ(parse_recipe(yaml, "p.yaml", {"model.dtype=float32"}).adapter.dtype, "float32");
  EXPECT_EQ(parse_recipe(yaml, "p.yaml", {"model.dtype=float16"}).adapter.dtype, "bfloat16");
  EXPECT_EQ(
      parse_recipe(yaml, "p.yaml", {"model.dtype=float32", "adapter.dtype=bfloat16"}).adapter.dtype,
      "bfloat16");
  EXPECT_EQ(
      parse_recipe(yaml, "p.yaml", {"model.dtype=bfloat16", "adapter.dtype=auto"}).adapter.dtype,
      "bfloat16");
  // A Recipe built in code keeps the struct's fixed defaults.
  EXPECT_EQ(Recipe{}.model.dtype, "bfloat16");
  EXPECT_EQ(Recipe{}.adapter.dtype, "bfloat16");
}

}  // namespace
}  // namespace qtrain

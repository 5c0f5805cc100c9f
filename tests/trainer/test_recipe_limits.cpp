// Bounds on what a recipe may make the reader do: nesting (yaml-cpp's parser recurses once per
// level), a second document (yaml-cpp would drop it silently), aliases that repeat a large value,
// and the size and kind of the file.
#include "core/error.h"
#include "core/read_file.h"
#include "tests/formats/safetensors_test_util.h"
#include "tests/support/test_support.h"
#include "trainer/recipe/recipe.h"
#include "trainer/recipe/yaml_text.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

namespace qtrain {
namespace {
using testing::capture_error;

const std::string kValid = R"(model:
  path: builtin:tiny
data:
  path: data.jsonl
)";

std::string repeat(const std::string& text, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += text;
  return out;
}

// ---- The nesting scan

TEST(NestingScan, CountsFlowCollections) {
  EXPECT_EQ(line_nested_deeper_than("a: [[1]]\n", 3), 0);  // mapping, two lists
  EXPECT_EQ(line_nested_deeper_than("a: [[[1]]]\n", 3), 1);
  EXPECT_EQ(line_nested_deeper_than("a: 1\nb: {c: [{d: 1}]}\n", 3), 2);
  EXPECT_EQ(line_nested_deeper_than("a: [\n [\n  [\n   [1]]]]\n", 4), 4);
  EXPECT_EQ(line_nested_deeper_than("a: &x !!seq [[[1]]]\n", 3), 1);  // after an anchor and a tag
}

TEST(NestingScan, CountsBlockIndentationAndCompactEntries) {
  EXPECT_EQ(line_nested_deeper_than("a:\n  b:\n    c: 1\n", 3), 0);
  EXPECT_EQ(line_nested_deeper_than("a:\n  b:\n    c:\n      d: 1\n", 3), 4);
  EXPECT_EQ(line_nested_deeper_than("a:\n  - - - 1\n", 4), 2);
  EXPECT_EQ(line_nested_deeper_than("a:\n- b\n- c\n- d\n", 2), 0);  // siblings do not add up
}

TEST(NestingScan, IgnoresBracketsInQuotesCommentsAndPlainText) {
  const std::string brackets(10, '[');
  EXPECT_EQ(line_nested_deeper_than("a: \"" + brackets + "\"\n", 3), 0);
  EXPECT_EQ(line_nested_deeper_than("a: '" + brackets + "'\n", 3), 0);
  EXPECT_EQ(line_nested_deeper_than("a: 'it''s " + brackets + "'\n", 3), 0);
  EXPECT_EQ(line_nested_deeper_than("a: 1  # " + brackets + "\n", 3), 0);
  EXPECT_EQ(line_nested_deeper_than("a: x" + brackets + "\n", 3), 0);
  EXPECT_EQ(line_nested_deeper_than("a: \"x\n  " + brackets + "\"\nb: 1\n", 3), 0);
  // An apostrophe inside plain text opens no quote: the brackets after it still count.
  EXPECT_EQ(line_nested_deeper_than("a: don't\nb: " + brackets + "1\n", 3), 2);
}

TEST(NestingScan, SkipsBlockScalars) {
  std::string text = "a: |\n";
  for (int i = 1; i <= 20; ++i) text += std::string(2 * i, ' ') + "- [[[[x\n";
  text += "b: 1\n";
  EXPECT_EQ(line_nested_deeper_than(text, 3), 0);
  EXPECT_EQ(line_nested_deeper_than(text + "c: [[[1]]]\n", 3), 23);
}

TEST(NestingScan, ShippedRecipesNestFourLevelsAtMost) {
  for (const auto& entry :
       std::filesystem::directory_iterator(testing::source_dir() + "/recipes")) {
    if (entry.path().extension() != ".yaml") continue;
    EXPECT_EQ(line_nested_deeper_than(testing::read_file(entry.path().string()), 4), 0)
        << entry.path();
  }
}

// ---- Through parse_recipe

TEST(RecipeLimits, RefusesDeepFlowNestingWithItsLine) {
  for (const int levels : {kMaxYamlDepth, 600, 100'000}) {  // yaml-cpp itself stops at 500
    const std::string yaml = kValid + "training:\n  seed: " + std::string(levels, '[') + "1" +
                             std::string(levels, ']') + "\n";
    const Error e = capture_error([&] { parse_recipe(yaml, "r.yaml"); });
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.message(), "too deeply nested: more than 64 levels of lists and mappings");
    EXPECT_EQ(e.context().line, 6);
  }
}

TEST(RecipeLimits, RefusesDeepBlockNesting) {
  std::string yaml = kValid + "training:\n";
  for (int i = 0; i < 100; ++i) yaml += std::string(2 * i + 2, ' ') + "-\n";
  const Error e = capture_error([&] { parse_recipe(yaml, "r.yaml"); });
  EXPECT_EQ(e.message(), "too deeply nested: more than 64 levels of lists and mappings");
  EXPECT_EQ(e.context().line, 4 + kMaxYamlDepth + 1);  // line n of the list nests n - 4 levels
}

TEST(RecipeLimits, RefusesASecondDocument) {
  const Error e =
      capture_error([] { parse_recipe(kValid + "---\ntraining:\n  lr: 5\n", "r.yaml"); });
  EXPECT_EQ(e.kind(), ErrorKind::kConfig);
  EXPECT_EQ(e.message().rfind("a second YAML document starts here", 0), 0u) << e.message();
  EXPECT_EQ(e.context().line, 5);
  EXPECT_EQ(e.context().file, "r.yaml");
  // An empty second document too: "---" ends the recipe's settings, whatever follows.
  EXPECT_EQ(capture_error([] { parse_recipe(kValid + "---\n", "r.yaml"); }).context().line, 5);
}

TEST(RecipeLimits, AcceptsOneDocumentWithMarkers) {
  EXPECT_NO_THROW(parse_recipe("---\n" + kValid + "...\n", "r.yaml"));
  EXPECT_NO_THROW(parse_recipe("%YAML 1.2\n---\n" + kValid, "r.yaml"));
}

TEST(RecipeLimits, RefusesAliasesThatRepeatALargeValue) {
  const std::string big(1 << 20, 'x');
  const std::string yaml = kValid + "quantization:\n  skip_modules: [&big " + big + ", " +
                           repeat("*big, ", 20) + "*big]\n";
  const Error e = capture_error([&] { parse_recipe(yaml, "r.yaml"); });
  EXPECT_EQ(e.kind(), ErrorKind::kConfig);
  EXPECT_EQ(e.context().field, "quantization.skip_modules");
  EXPECT_EQ(e.context().line, 6);
  EXPECT_EQ(e.message(),
            "YAML aliases expand to more than 16 MiB of text or 100000 values (write the values "
            "out instead)");
}

TEST(RecipeLimits, RefusesAliasesThatRepeatManyValues) {
  const std::string yaml =
      kValid + "quantization:\n  skip_modules: [&m lm_head, " + repeat("*m, ", 100'000) + "*m]\n";
  const Error e = capture_error([&] { parse_recipe(yaml, "r.yaml"); });
  EXPECT_NE(e.message().find("or 100000 values"), std::string::npos) << e.message();
}

TEST(RecipeLimits, AcceptsOrdinaryAliases) {
  const Recipe r =
      parse_recipe(kValid + "quantization:\n  skip_modules: [&head lm_head, *head]\n", "r.yaml");
  EXPECT_EQ(r.quantization.skip_modules, (std::vector<std::string>{"lm_head", "lm_head"}));
}

TEST(RecipeLimits, OverridesShareTheBudget) {
  // 99,990 repeats from the file's aliases pass; 20 more from an override's do not.
  const std::string yaml =
      kValid + "quantization:\n  skip_modules: [&m lm_head" + repeat(", *m", 99'990) + "]\n";
  EXPECT_NO_THROW(parse_recipe(yaml, "r.yaml"));
  EXPECT_NO_THROW(parse_recipe(yaml, "r.yaml", {"adapter.target_modules=[q, q, q]"}));
  const std::string override_text = "adapter.target_modules=[&q q" + repeat(", *q", 20) + "]";
  const Error e = capture_error([&] { parse_recipe(yaml, "r.yaml", {override_text}); });
  EXPECT_EQ(e.context().field, "adapter.target_modules");
  EXPECT_NE(e.message().find("or 100000 values"), std::string::npos) << e.message();
}

TEST(RecipeLimits, TheResolvedRecipeOfAnAliasedOneParsesBack) {
  // Only repeats spend: written out, 99,991 module names (plus the defaults) are no aliases.
  const std::string yaml =
      kValid + "quantization:\n  skip_modules: [&m lm_head" + repeat(", *m", 99'990) + "]\n";
  const Recipe recipe = parse_recipe(yaml, "r.yaml");
  EXPECT_EQ(parse_recipe(recipe_to_yaml(recipe), "resolved.yaml"), recipe);
}

TEST(RecipeLimits, RefusesADeepOverrideValue) {
  const std::string text =
      "adapter.target_modules=" + std::string(1000, '[') + "q" + std::string(1000, ']');
  const Error e = capture_error([&] { parse_recipe(kValid, "r.yaml", {text}); });
  EXPECT_EQ(e.kind(), ErrorKind::kUsage);
  EXPECT_NE(e.message().find("the value is not valid YAML: too deeply nested"), std::string::npos)
      << e.message().substr(0, 200);
}

// ---- The file

TEST(RecipeLimits, RefusesAnOversizedFileOrADevice) {
  testing::ScratchDir dir;
  const std::string big = dir.file("big.yaml");
  testing::write_file(big, kValid + "# " + std::string(kMaxRecipeBytes, 'x') + "\n");
  const Error large = capture_error([&] { load_recipe(big); });
  EXPECT_EQ(large.kind(), ErrorKind::kFormat);
  EXPECT_EQ(large.message().rfind("recipe is larger than 1 MiB (", 0), 0u) << large.message();
  EXPECT_EQ(large.context().file, big);

  const std::string zero = dir.file("zero.yaml");
  std::filesystem::create_symlink("/dev/zero", zero);
  const Error device = capture_error([&] { load_recipe(zero); });
  EXPECT_EQ(device.kind(), ErrorKind::kIo);
  EXPECT_EQ(device.message(), "recipe is not a regular file (it is a character device)");
}

}  // namespace
}  // namespace qtrain

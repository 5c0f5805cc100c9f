// core/json_file.h: parse_json_text builds what nlohmann::json::parse builds, refuses deep nesting
// and duplicate keys while parsing (naming the key path and the line), and leaves syntax errors
// to nlohmann's exceptions.
#include "core/json_file.h"

#include "core/error.h"
#include "tests/formats/safetensors_test_util.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>

#include <string>

namespace qtrain {
namespace {
using nlohmann::json;
using testing::capture_error;

std::string nested_arrays(int levels, const std::string& inner = "1") {
  return std::string(levels, '[') + inner + std::string(levels, ']');
}

TEST(ParseJsonText, BuildsWhatNlohmannBuilds) {
  const std::string text = R"({"a": [1, -2, 3.5, "x", true, false, null, {"b": {}}, []],
    "big": 18446744073709551615, "s": "\u00e9\n", "nested": {"k": [[{"z": 0}]]}})";
  EXPECT_EQ(parse_json_text(text, "t.json"), json::parse(text));
  EXPECT_EQ(parse_json_text("7", "t.json"), json(7));
  EXPECT_EQ(parse_json_text("  \"only\"  ", "t.json"), json("only"));
}

TEST(ParseJsonText, AcceptsNestingUpToTheLimit) {
  EXPECT_EQ(parse_json_text(nested_arrays(kMaxJsonDepth), "t.json"),
            json::parse(nested_arrays(kMaxJsonDepth)));
  EXPECT_NO_THROW(parse_json_text(nested_arrays(5), "t.json", 5));
}

TEST(ParseJsonText, RefusesNestingBeyondTheLimit) {
  const Error e = capture_error([] { parse_json_text(nested_arrays(6), "t.json", 5); });
  EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  EXPECT_EQ(e.message(), "JSON nested deeper than 5 levels");
  EXPECT_EQ(e.context().file, "t.json");
  EXPECT_EQ(e.context().line, 1);
  EXPECT_EQ(e.context().field, "[0][0][0][0][0]");
}

TEST(ParseJsonText, RefusesAHundredThousandLevelsWithoutRecursing) {
  // The issue's reproduction: 70k levels overflowed the stack in dump(); 100k in objects and
  // arrays under a key, one level per line so that the line is checked too.
  std::string text = "{\"vocab_size\":\n";
  for (int i = 0; i < 50'000; ++i) text += "[{\"k\":\n";
  text += "384";
  for (int i = 0; i < 50'000; ++i) text += "}]";
  text += "}";
  const Error e = capture_error([&] { parse_json_text(text, "config.json"); });
  EXPECT_EQ(e.message(), "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  EXPECT_EQ(e.context().line, 1 + kMaxJsonDepth / 2);
  EXPECT_EQ(e.context().field.rfind("vocab_size[0].k[0].k", 0), 0u) << e.context().field;
  EXPECT_LE(e.context().field.size(), 52u);  // a deep path is cut short
}

TEST(ParseJsonText, RefusesADuplicateKeyNamingItsPathAndLine) {
  const std::string text = "{\"a\": {\"b\": [1,\n {\"c\": 1,\n  \"c\": 2}]}}";
  const Error e = capture_error([&] { parse_json_text(text, "config.json"); });
  EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  EXPECT_EQ(e.message(), "duplicate JSON key 'c'");
  EXPECT_EQ(e.context().field, "a.b[1].c");
  EXPECT_EQ(e.context().line, 3);
  EXPECT_EQ(e.context().file, "config.json");
}

TEST(ParseJsonText, NamesTheLineOfTheDuplicateKeyNotOfWhatFollowsItsValue) {
  // The parser reads one character past a number: here the line break.
  const Error e = capture_error([] { parse_json_text("{\"r\": 8,\n\"r\": 16\n}", "c.json"); });
  EXPECT_EQ(e.context().line, 2);
}

TEST(ParseJsonText, RefusesADuplicateTopLevelKey) {
  const Error e = capture_error(
      [] { parse_json_text(R"({"vocab_size": 384, "hidden_size": 8, "vocab_size": 9})", "c"); });
  EXPECT_EQ(e.message(), "duplicate JSON key 'vocab_size'");
  EXPECT_EQ(e.context().field, "vocab_size");
}

TEST(ParseJsonText, AllowsTheSameKeyInDifferentObjects) {
  const std::string text = R"([{"id": 1}, {"id": 2, "x": {"id": 3}}])";
  EXPECT_EQ(parse_json_text(text, "t.json"), json::parse(text));
}

TEST(ParseJsonText, ShowsControlCharactersInKeysEscaped) {
  const Error e =
      capture_error([] { parse_json_text("{\"\\u001b[31m\": 1, \"\\u001b[31m\": 2}", "t"); });
  EXPECT_EQ(e.message(), "duplicate JSON key '\\x1B[31m'");
}

TEST(ParseJsonText, LeavesSyntaxErrorsToNlohmann) {
  try {
    parse_json_text("{\"a\": [1, 2}", "t.json");
    FAIL() << "no exception";
  } catch (const json::parse_error& e) {
    EXPECT_EQ(e.byte, 12u);
    EXPECT_NE(std::string(e.what()).find("syntax error"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_json_text("", "t.json"), json::parse_error);
  EXPECT_THROW(parse_json_text("{} x", "t.json"), json::parse_error);
  EXPECT_THROW(parse_json_text("[1e999]", "t.json"), json::out_of_range);
}

TEST(ReadJsonFile, NamesTheFileInItsErrors) {
  testing::ScratchDir dir;
  const Error missing =
      capture_error([&] { read_json_file(dir.file("none.json"), "model config"); });
  EXPECT_EQ(missing.kind(), ErrorKind::kIo);
  EXPECT_EQ(missing.message(), "cannot open model config");

  testing::write_file(dir.file("bad.json"), "{\"a\": ");
  const Error bad = capture_error([&] { read_json_file(dir.file("bad.json")); });
  EXPECT_EQ(bad.kind(), ErrorKind::kFormat);
  EXPECT_EQ(bad.message().rfind("invalid JSON: ", 0), 0u) << bad.message();
  EXPECT_EQ(bad.context().file, dir.file("bad.json"));

  testing::write_file(dir.file("dup.json"), "{\"r\": 8,\n\"r\": 16}");
  const Error dup = capture_error([&] { read_json_file(dir.file("dup.json")); });
  EXPECT_EQ(dup.message(), "duplicate JSON key 'r'");
  EXPECT_EQ(dup.context().line, 2);

  testing::write_file(dir.file("good.json"), "{\"r\": 8}");
  EXPECT_EQ(read_json_file(dir.file("good.json")), json({{"r", 8}}));
}

}  // namespace
}  // namespace qtrain

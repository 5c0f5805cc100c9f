// Dataset files -> records: JSONL, JSON arrays and text files, with the line numbers later errors
// quote, and the errors for bad files.
#include "core/error.h"
#include "data/records.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace qtrain {
namespace {

using testing::ScratchDir;
using testing::write_file;

Error error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error";
  return Error(ErrorKind::kInternal, "none");
}

TEST(Records, JsonlKeepsLineNumbersAndSkipsBlankLines) {
  ScratchDir dir;
  const std::string path = dir.file("d.jsonl");
  write_file(path, "{\"a\": 1}\n\n  \r\n{\"a\": 2}\r\n{\"a\": 3}");  // no final newline
  const auto records = read_records(path);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].value["a"], 1);
  EXPECT_EQ(records[0].line, 1);
  EXPECT_EQ(records[1].line, 4);
  EXPECT_EQ(records[2].line, 5);
  EXPECT_EQ(records[2].value["a"], 3);
  EXPECT_EQ(records[2].file, path);
}

TEST(Records, JsonArrayElementsGetTheLineOfTheirOpeningBrace) {
  ScratchDir dir;
  const std::string path = dir.file("d.json");
  write_file(path, "[\n  {\"a\": \"x, [y] {z}\"},\n\n  {\n    \"a\": 2\n  },  {\"a\": 3}\n]\n");
  const auto records = read_records(path);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].line, 2);
  EXPECT_EQ(records[1].line, 4);
  EXPECT_EQ(records[2].line, 6);
  EXPECT_EQ(records[0].value["a"], "x, [y] {z}");
}

TEST(Records, TextFilesAreOneRecordEach) {
  ScratchDir dir;
  std::filesystem::create_directory(dir.file("texts"));
  write_file(dir.file("texts/b.txt"), "second\nfile\n");
  write_file(dir.file("texts/a.txt"), "first");
  write_file(dir.file("texts/skip.md"), "not text");
  const auto records = read_records(dir.file("texts"));
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].value["text"], "first");
  EXPECT_EQ(records[1].value["text"], "second\nfile\n");
  EXPECT_EQ(records[1].file, dir.file("texts/b.txt"));
  const auto single = read_records(dir.file("texts/a.txt"));
  ASSERT_EQ(single.size(), 1u);
  EXPECT_EQ(single[0].value["text"], "first");
}

TEST(Records, SkipBadLinesCountsThem) {
  ScratchDir dir;
  const std::string path = dir.file("d.jsonl");
  write_file(path, "{\"a\": 1}\n{\"a\": \n[1, 2]\n{\"a\": 4}\n");
  int64_t skipped = 0;
  const auto records = read_records(path, /*skip_bad_lines=*/true, &skipped);
  EXPECT_EQ(skipped, 2);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].line, 4);
}

// data.max_record_bytes bounds what one record may take: a .jsonl line (read without holding
// more than the limit of it), a .json array element, a .txt file.
TEST(Records, RecordsLongerThanTheLimitAreBadRecords) {
  ScratchDir dir;
  const std::string fits = "{\"t\": \"" + std::string(20, 'x') + "\"}";  // 29 bytes
  const std::string too_long = "{\"t\": \"" + std::string(21, 'x') + "\"}";
  const std::string huge = "{\"t\": \"" + std::string(300000, 'x') + "\"}";  // several chunks
  ASSERT_EQ(fits.size(), 29u);
  const int64_t limit = 29;

  write_file(dir.file("d.jsonl"), fits + "\n" + too_long + "\n" + huge + "\n" + fits);
  const Error e = error_of([&] { read_records(dir.file("d.jsonl"), false, nullptr, limit); });
  EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  EXPECT_EQ(e.context().line, 2);
  EXPECT_EQ(e.message(),
            "record is 30 bytes, more than data.max_record_bytes = 29 (split it, or "
            "raise the limit)");
  int64_t skipped = 0;
  auto records = read_records(dir.file("d.jsonl"), true, &skipped, limit);
  EXPECT_EQ(skipped, 2);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].line, 4);  // line numbers survive the skipped long lines
  EXPECT_EQ(records[1].value["t"], std::string(20, 'x'));
  skipped = 0;
  records = read_records(dir.file("d.jsonl"), true, &skipped);  // the 8 MiB default
  EXPECT_EQ(skipped, 0);
  EXPECT_EQ(records.size(), 4u);

  write_file(dir.file("d.json"), "[" + fits + ",\n " + too_long + " ,  " + fits + "\n]");
  const Error element = error_of([&] { read_records(dir.file("d.json"), false, nullptr, limit); });
  EXPECT_EQ(element.context().line, 2);
  EXPECT_NE(std::string(element.what()).find("record is 30 bytes"), std::string::npos)
      << element.what();
  skipped = 0;
  EXPECT_EQ(read_records(dir.file("d.json"), true, &skipped, limit).size(), 2u);
  EXPECT_EQ(skipped, 1);

  std::filesystem::create_directory(dir.file("texts"));
  write_file(dir.file("texts/a.txt"), std::string(29, 'a'));
  write_file(dir.file("texts/b.txt"), std::string(30, 'b'));
  const Error text = error_of([&] { read_records(dir.file("texts"), false, nullptr, limit); });
  EXPECT_EQ(text.context().file, dir.file("texts/b.txt"));
  skipped = 0;
  EXPECT_EQ(read_records(dir.file("texts"), true, &skipped, limit).size(), 1u);
  EXPECT_EQ(skipped, 1);
}

// Lines around the 64 KiB chunks read_jsonl reads them in, the last one without a newline.
TEST(Records, JsonlLinesOfEveryLengthAroundTheReadChunkSurvive) {
  ScratchDir dir;
  std::string contents;
  std::vector<size_t> lengths = {65534, 65535, 65536, 65537, 131071, 131072, 10, 65535};
  for (size_t i = 0; i < lengths.size(); ++i) {
    contents += "{\"t\": \"" + std::string(lengths[i] - 9, 'x') + "\"}";  // lengths[i] bytes
    if (i + 1 < lengths.size()) contents += "\n";
  }
  write_file(dir.file("d.jsonl"), contents);
  const auto records = read_records(dir.file("d.jsonl"), false, nullptr, 131072);
  ASSERT_EQ(records.size(), lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    EXPECT_EQ(records[i].line, static_cast<int64_t>(i + 1));
    EXPECT_EQ(records[i].value["t"].get<std::string>().size() + 9, lengths[i]);
  }
  const Error e = error_of([&] { read_records(dir.file("d.jsonl"), false, nullptr, 131071); });
  EXPECT_EQ(e.context().line, 6);
}

struct BadFile {
  std::string name;
  std::string contents;
  ErrorKind kind;
  std::string expected;  // substring of the message, with {} for the file's path
};

TEST(Records, BadFilesNameFileAndLine) {
  ScratchDir dir;
  const std::vector<BadFile> cases = {
      {"malformed.jsonl", "{\"a\": 1}\n\n{\"a\": 1,}\n", ErrorKind::kFormat,
       "{}:3: malformed JSON at column"},
      {"not_object.jsonl", "{\"a\": 1}\n\"just a string\"\n", ErrorKind::kFormat,
       "{}:2: expected a JSON object, found string"},
      {"empty.jsonl", "", ErrorKind::kConfig, "no samples in {}"},
      {"blank.jsonl", "\n  \n", ErrorKind::kConfig, "no samples in {}"},
      {"empty.json", "[]", ErrorKind::kConfig, "no samples in {}"},
      {"malformed.json", "[\n {\"a\": 1},\n {\"a\" 2}\n]", ErrorKind::kFormat,
       "{}:3: malformed JSON at column"},
      {"object.json", "{\"a\": 1}", ErrorKind::kFormat, "{}:1: expected a JSON array"},
      {"element.json", "[\n {\"a\": 1},\n 5\n]", ErrorKind::kFormat,
       "{}:3: element 1 is not a JSON object"},
      {"data.csv", "a,b\n", ErrorKind::kConfig, "{}: unknown dataset file type"},
      {"empty.txt", "", ErrorKind::kConfig, "no samples in {}"},
      // Found by fuzz_records: numbers beyond double escaped as out_of_range (exit 70).
      {"overflow.jsonl", "{\"a\": 1}\n{\"a\": 1e999}\n", ErrorKind::kFormat,
       "{}:2: malformed JSON"},
      {"overflow.json", "[{\"a\": -1e400}]", ErrorKind::kFormat, "{}: malformed JSON"},
      {"latin1.txt", "caf\xc3\xa9\nna\xefve\n", ErrorKind::kFormat, "{}:2: not valid UTF-8"},
  };
  for (const auto& c : cases) {
    const std::string path = dir.file(c.name);
    write_file(path, c.contents);
    const Error e = error_of([&] { read_records(path); });
    std::string expected = c.expected;
    expected.replace(expected.find("{}"), 2, path);
    EXPECT_EQ(e.kind(), c.kind) << c.name << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos)
        << c.name << ": " << e.what() << "\nexpected: " << expected;
  }
  const Error missing = error_of([&] { read_records(dir.file("missing.jsonl")); });
  EXPECT_EQ(missing.kind(), ErrorKind::kIo);
  EXPECT_EQ(missing.context().file, dir.file("missing.jsonl"));
}

}  // namespace
}  // namespace qtrain

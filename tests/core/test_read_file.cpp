// core/read_file.h: whole-file reads refuse what is too large or not a regular file (a device,
// a FIFO: never blocking on it), naming the file; a stream reader can check the same up front.
#include "core/read_file.h"

#include "core/error.h"
#include "tests/formats/safetensors_test_util.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace qtrain {
namespace {
using testing::capture_error;
using testing::ScratchDir;

TEST(ReadSmallFile, ReadsAFileUpToTheLimit) {
  ScratchDir dir;
  const std::string path = dir.file("r.yaml");
  testing::write_file(path, std::string(10, 'x'));
  EXPECT_EQ(read_small_file(path, 10, "recipe"), std::string(10, 'x'));
  testing::write_file(path, "");
  EXPECT_EQ(read_small_file(path, 10, "recipe"), "");
}

TEST(ReadSmallFile, RefusesAFileOverTheLimit) {
  ScratchDir dir;
  const std::string path = dir.file("r.yaml");
  testing::write_file(path, std::string(11, 'x'));
  const Error e = capture_error([&] { read_small_file(path, 10, "recipe"); });
  EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  EXPECT_EQ(e.message(), "recipe is larger than 10 bytes (11 bytes)");
  EXPECT_EQ(e.context().file, path);

  testing::write_file(path, std::string(kMiB + 1, 'x'));
  EXPECT_EQ(capture_error([&] { read_small_file(path, kMiB, "recipe"); }).message(),
            "recipe is larger than 1 MiB (1048577 bytes)");
}

TEST(ReadSmallFile, CapsFilesThatReportNoSize) {
  // /proc files report size 0 and are read up to the limit.
  const Error e = capture_error([] { read_small_file("/proc/self/maps", 16, "dataset file"); });
  EXPECT_EQ(e.message(), "dataset file is larger than 16 bytes (more than 16 bytes)");
}

TEST(ReadSmallFile, RefusesDevicesAndSymlinksToThem) {
  ScratchDir dir;
  const std::string link = dir.file("tokenizer.json");
  std::filesystem::create_symlink("/dev/zero", link);
  const Error e = capture_error([&] { read_small_file(link, kMiB, "tokenizer.json"); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_EQ(e.message(), "tokenizer.json is not a regular file (it is a character device)");
  EXPECT_EQ(e.context().file, link);
}

TEST(ReadSmallFile, RefusesAFifoWithoutBlocking) {
  ScratchDir dir;
  const std::string fifo = dir.file("r.yaml");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const Error e = capture_error([&] { read_small_file(fifo, kMiB, "recipe"); });
  EXPECT_EQ(e.message(), "recipe is not a regular file (it is a FIFO)");
}

TEST(ReadSmallFile, CannotOpenAMissingFileOrADirectory) {
  ScratchDir dir;
  for (const std::string& path : {dir.file("missing"), dir.path()}) {
    const Error e = capture_error([&] { read_small_file(path, kMiB, "SentencePiece model"); });
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_EQ(e.message(), "cannot open SentencePiece model");
    EXPECT_EQ(e.context().file, path);
  }
}

TEST(RefuseSpecialFile, PassesFilesDirectoriesAndMissingPaths) {
  ScratchDir dir;
  testing::write_file(dir.file("d.jsonl"), "{}\n");
  EXPECT_NO_THROW(refuse_special_file(dir.file("d.jsonl"), "dataset file"));
  EXPECT_NO_THROW(refuse_special_file(dir.path(), "dataset file"));
  EXPECT_NO_THROW(refuse_special_file(dir.file("missing"), "dataset file"));
  const Error e = capture_error([] { refuse_special_file("/dev/null", "dataset file"); });
  EXPECT_EQ(e.message(), "dataset file is not a regular file (it is a character device)");
}

TEST(ByteLimitText, ShowsWholeMebibytes) {
  EXPECT_EQ(byte_limit_text(kMaxRecipeBytes), "1 MiB");
  EXPECT_EQ(byte_limit_text(kMaxTokenizerJsonBytes), "256 MiB");
  EXPECT_EQ(byte_limit_text(1000), "1000 bytes");
}

}  // namespace
}  // namespace qtrain

// core/atomic_file.h: the target holds either its old bytes or all the new ones, never a part,
// and no temp file outlives an AtomicFile.
#include "core/atomic_file.h"

#include "core/error.h"
#include "tests/formats/safetensors_test_util.h"
#include "tests/support/test_support.h"

#include <dirent.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace qtrain {
namespace {
using testing::capture_error;
using testing::ScratchDir;

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (const dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

TEST(AtomicFile, CommitWritesTheBytes) {
  ScratchDir dir;
  const std::string path = dir.file("out.bin");
  AtomicFile file(path);
  file.write("hello, ", 7);
  file.write(std::string_view("world"));
  EXPECT_EQ(file.bytes_written(), 12u);
  EXPECT_EQ(listing(dir.path()).size(), 1u);  // only the temp file so far
  file.commit();
  EXPECT_EQ(testing::read_file(path), "hello, world");
  EXPECT_EQ(listing(dir.path()), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFile, CommitReplacesAnExistingTarget) {
  ScratchDir dir;
  const std::string path = dir.file("out.txt");
  testing::write_file(path, "old contents, longer than the new ones");
  write_file_atomically(path, "new");
  EXPECT_EQ(testing::read_file(path), "new");
  EXPECT_EQ(listing(dir.path()), std::vector<std::string>{"out.txt"});
}

TEST(AtomicFile, AbandonedFileLeavesTheTargetAndNoTempFile) {
  ScratchDir dir;
  const std::string path = dir.file("keep.txt");
  const std::string before = "the original bytes\n";
  testing::write_file(path, before);
  {
    AtomicFile file(path);
    file.write(std::string(1 << 16, 'x'));
  }
  EXPECT_EQ(testing::read_file(path), before);
  EXPECT_EQ(listing(dir.path()), std::vector<std::string>{"keep.txt"});
}

TEST(AtomicFile, AbandonedFileWithoutTargetLeavesNothing) {
  ScratchDir dir;
  { AtomicFile file(dir.file("never.txt")); }
  EXPECT_TRUE(listing(dir.path()).empty());
}

TEST(AtomicFile, MissingDirectoryIsAnIoErrorNamingThePath) {
  ScratchDir dir;
  const std::string path = dir.file("no/such/dir/x.bin");
  Error e = capture_error([&] { AtomicFile file(path); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_EQ(e.context().file, path);
  EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();

  e = capture_error([&] { write_file_atomically(path, "x"); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_TRUE(listing(dir.path()).empty());
}

TEST(AtomicFile, TwoOpenFilesForOneTargetUseDistinctTempFiles) {
  ScratchDir dir;
  const std::string path = dir.file("shared.txt");
  AtomicFile first(path);
  AtomicFile second(path);
  EXPECT_EQ(listing(dir.path()).size(), 2u);
  first.write(std::string_view("first"));
  second.write(std::string_view("second"));
  first.commit();
  second.commit();
  EXPECT_EQ(testing::read_file(path), "second");
  EXPECT_EQ(listing(dir.path()), std::vector<std::string>{"shared.txt"});
}

TEST(AtomicFile, UseAfterCommitIsAnInternalError) {
  ScratchDir dir;
  AtomicFile file(dir.file("once.txt"));
  file.commit();
  EXPECT_EQ(capture_error([&] { file.write("x", 1); }).kind(), ErrorKind::kInternal);
  EXPECT_EQ(capture_error([&] { file.commit(); }).kind(), ErrorKind::kInternal);
  EXPECT_EQ(testing::read_file(dir.file("once.txt")), "");
}

TEST(AtomicFile, LargeWritesRoundTrip) {
  ScratchDir dir;
  const std::string path = dir.file("large.bin");
  std::string bytes(6 << 20, '\0');
  std::mt19937 rng(7);
  for (char& c : bytes) c = static_cast<char>(rng());

  AtomicFile file(path);
  // One write of most of it, then uneven pieces.
  const size_t head = 5 << 20;
  file.write(bytes.data(), head);
  for (size_t at = head; at < bytes.size(); at += 4093) {
    file.write(bytes.data() + at, std::min<size_t>(4093, bytes.size() - at));
  }
  EXPECT_EQ(file.bytes_written(), bytes.size());
  file.commit();
  EXPECT_EQ(testing::read_file(path), bytes);

  write_file_atomically(path, std::string_view(bytes).substr(1));
  EXPECT_EQ(testing::read_file(path), bytes.substr(1));
}

}  // namespace
}  // namespace qtrain

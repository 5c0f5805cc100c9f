// Round trips, zero-copy views and the atomic writer.
#include "formats/safetensors/safetensors.h"

#include "core/dtype.h"
#include "core/error.h"
#include "tests/formats/safetensors_test_util.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include <csignal>
#include <filesystem>
#include <random>

namespace qtrain {
namespace {
namespace fs = std::filesystem;
using testing::bit_equal;
using testing::capture_error;
using testing::ScratchDir;

const std::vector<at::ScalarType> kAllTypes = {
    at::kBool,
    at::kByte,
    at::kChar,
    at::kShort,
    at::kUInt16,
    at::kHalf,
    at::kBFloat16,
    at::kInt,
    at::kUInt32,
    at::kFloat,
    at::kDouble,
    at::kLong,
    at::kUInt64,
    at::kComplexFloat,
    at::kFloat8_e5m2,
    at::kFloat8_e4m3fn,
    at::kFloat8_e4m3fnuz,
    at::kFloat8_e5m2fnuz,
};

// Random bit patterns (NaN payloads, denormals, -0 included); booleans stay 0/1.
at::Tensor random_bits(at::ScalarType type, std::vector<int64_t> shape, uint32_t seed) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  std::vector<uint8_t> bytes(numel * element_size(type));
  std::mt19937 rng(seed);
  for (auto& b : bytes) b = type == at::kBool ? rng() % 2 : rng() % 256;
  return at::from_blob(bytes.data(), shape, at::TensorOptions().dtype(type)).clone();
}

std::string header_of(const std::string& path) {
  std::string raw = testing::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  return raw.substr(8, n);
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(Safetensors, RoundTripEveryDtypeBitExact) {
  ScratchDir dir;
  NamedTensors tensors;
  uint32_t seed = 1;
  for (at::ScalarType type : kAllTypes) {
    std::string dtype = safetensors_dtype_name(type);
    tensors.emplace_back(dtype, random_bits(type, {3, 5}, seed++));
    tensors.emplace_back(dtype + "_scalar", random_bits(type, {}, seed++));
    tensors.emplace_back(dtype + "_empty", random_bits(type, {0, 4}, seed++));
    tensors.emplace_back(dtype + "_empty2", random_bits(type, {2, 0, 3}, seed++));
  }
  const std::string path = dir.file("all.safetensors");
  write_safetensors(path, tensors);

  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(file->names().size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    const TensorInfo& info = file->info(name);
    EXPECT_EQ(info.name, name);
    EXPECT_EQ(info.dtype, safetensors_dtype_name(expected.scalar_type()));
    EXPECT_EQ(info.scalar_type, expected.scalar_type());
    EXPECT_EQ(info.shape, expected.sizes().vec());
    EXPECT_EQ(info.end - info.begin, expected.nbytes());
    at::Tensor actual = file->tensor(name);
    EXPECT_TRUE(actual.device().is_cpu());
    EXPECT_TRUE(bit_equal(expected, actual));
    if (expected.numel() > 0) {
      EXPECT_EQ(actual.data_ptr(), file->data(name)) << "not zero-copy";
    }
  }
}

TEST(Safetensors, NonContiguousInputsAreWrittenInLogicalOrder) {
  ScratchDir dir;
  at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  at::Tensor complex = random_bits(at::kComplexFloat, {2, 3}, 7);
  NamedTensors tensors = {
      {"transposed", base.t()},
      {"strided", base.slice(1, 0, 6, 2)},
      {"expanded", at::arange(3, at::kInt).expand({4, 3})},
      {"offset_view", base.select(0, 2)},
      {"conj_view", complex.conj()},
      {"requires_grad", at::ones({2, 2}).requires_grad_()},
  };
  write_safetensors(dir.file("v.safetensors"), tensors);
  auto file = SafetensorsFile::open(dir.file("v.safetensors"));
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(bit_equal(expected.contiguous(), file->tensor(name)));
  }
  EXPECT_TRUE(at::equal(file->tensor("conj_view"), complex.conj().resolve_conj()));
}

TEST(Safetensors, CudaTensorsAreCopiedToHost) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  ScratchDir dir;
  at::Tensor host = random_bits(at::kBFloat16, {64, 3}, 3);
  write_safetensors(dir.file("c.safetensors"), {{"w", host.cuda().t()}});
  EXPECT_TRUE(bit_equal(host.t().contiguous(),
                        SafetensorsFile::open(dir.file("c.safetensors"))->tensor("w")));
}

TEST(Safetensors, MetadataRoundTrip) {
  ScratchDir dir;
  std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"unicode", "h\u00e9llo \u2713"}, {"quotes", "a \"b\" \\ c\n"}, {"", ""}};
  write_safetensors(dir.file("m.safetensors"), {{"x", at::ones({1})}}, metadata);
  EXPECT_EQ(SafetensorsFile::open(dir.file("m.safetensors"))->metadata(), metadata);

  write_safetensors(dir.file("none.safetensors"), {{"x", at::ones({1})}}, {});
  EXPECT_TRUE(SafetensorsFile::open(dir.file("none.safetensors"))->metadata().empty());
  EXPECT_EQ(header_of(dir.file("none.safetensors")).find("__metadata__"), std::string::npos);
}

TEST(Safetensors, HeaderIsCompactMetadataFirstPaddedTo8) {
  ScratchDir dir;
  write_safetensors(dir.file("h.safetensors"),
                    {{"w", at::zeros({2, 2})}, {"a", at::zeros({3}, at::kByte)}});
  std::string header = header_of(dir.file("h.safetensors"));
  EXPECT_EQ(header.size() % 8, 0u);
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("a":{"dtype":"U8","shape":[3],"data_offsets":[16,19]}})";
  ASSERT_GE(header.size(), json.size());
  EXPECT_EQ(header.substr(0, json.size()), json);
  EXPECT_EQ(header.substr(json.size()), std::string(header.size() - json.size(), ' '));
  EXPECT_EQ(fs::file_size(dir.file("h.safetensors")), 8 + header.size() + 19);
}

TEST(Safetensors, NamesFollowDataOffsets) {
  ScratchDir dir;
  write_safetensors(dir.file("o.safetensors"),
                    {{"zeta", at::ones({2})}, {"alpha", at::ones({3})}, {"mid", at::ones({1})}});
  auto file = SafetensorsFile::open(dir.file("o.safetensors"));
  EXPECT_EQ(file->names(), (std::vector<std::string>{"zeta", "alpha", "mid"}));
  EXPECT_TRUE(file->contains("alpha"));
  EXPECT_FALSE(file->contains("beta"));
}

TEST(Safetensors, EmptyTensorListIsValid) {
  ScratchDir dir;
  write_safetensors(dir.file("e.safetensors"), {});
  auto file = SafetensorsFile::open(dir.file("e.safetensors"));
  EXPECT_TRUE(file->names().empty());
  EXPECT_EQ(file->metadata().at("format"), "pt");
}

TEST(Safetensors, ViewsAreCopyOnWrite) {
  ScratchDir dir;
  const std::string path = dir.file("cow.safetensors");
  write_safetensors(path, {{"x", at::arange(16, at::kFloat)}});
  const std::string before = testing::read_file(path);
  {
    auto file = SafetensorsFile::open(path);
    at::Tensor view = file->tensor("x");
    view.fill_(42.0f);
    EXPECT_EQ(file->tensor("x")[3].item<float>(), 42.0f) << "views share the mapping";
  }
  EXPECT_EQ(testing::read_file(path), before);
  EXPECT_TRUE(at::equal(SafetensorsFile::open(path)->tensor("x"), at::arange(16, at::kFloat)));
}

TEST(Safetensors, ViewKeepsMappingAlive) {
  ScratchDir dir;
  const std::string path = dir.file("alive.safetensors");
  write_safetensors(path, {{"x", at::arange(1000, at::kDouble)}});
  at::Tensor view = SafetensorsFile::open(path)->tensor("x");  // the file object dies here
  fs::remove(path);
  EXPECT_EQ(view.sum().item<double>(), 999.0 * 1000.0 / 2.0);
}

TEST(Safetensors, MissingTensorIsShapeError) {
  ScratchDir dir;
  write_safetensors(dir.file("a.safetensors"), {{"x", at::ones({1})}});
  auto file = SafetensorsFile::open(dir.file("a.safetensors"));
  Error e = capture_error([&] { file->tensor("nope"); });
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_NE(std::string(e.what()).find("nope"), std::string::npos);
  EXPECT_NE(std::string(e.what()).find("a.safetensors"), std::string::npos);
}

TEST(Safetensors, MissingOrNonRegularFileIsIoError) {
  ScratchDir dir;
  Error missing = capture_error([&] { SafetensorsFile::open(dir.file("absent.safetensors")); });
  EXPECT_EQ(missing.kind(), ErrorKind::kIo);
  EXPECT_NE(std::string(missing.what()).find("absent.safetensors"), std::string::npos);
  EXPECT_EQ(capture_error([&] { SafetensorsFile::open(dir.path()); }).kind(), ErrorKind::kIo);
}

TEST(SafetensorsWriter, DuplicateNamesLeaveExistingFileIntact) {
  ScratchDir dir;
  const std::string path = dir.file("keep.safetensors");
  write_safetensors(path, {{"x", at::arange(8, at::kFloat)}});
  const std::string before = testing::read_file(path);
  Error e = capture_error([&] {
    write_safetensors(path, {{"y", at::ones({4})}, {"y", at::zeros({4})}});
  });
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_NE(std::string(e.what()).find("'y'"), std::string::npos);
  EXPECT_EQ(testing::read_file(path), before);
  EXPECT_EQ(files_in(dir.path()), std::vector<std::string>{"keep.safetensors"});
}

TEST(SafetensorsWriter, BadInputsAreRejectedBeforeWriting) {
  ScratchDir dir;
  const std::string path = dir.file("keep.safetensors");
  write_safetensors(path, {{"x", at::arange(8, at::kFloat)}});
  const std::string before = testing::read_file(path);
  auto expect_rejected = [&](const NamedTensors& tensors, ErrorKind kind) {
    Error e = capture_error([&] { write_safetensors(path, tensors); });
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find("keep.safetensors"), std::string::npos) << e.what();
    EXPECT_EQ(testing::read_file(path), before);
    EXPECT_EQ(files_in(dir.path()), std::vector<std::string>{"keep.safetensors"});
  };
  expect_rejected({{"ok", at::ones({2})}, {"c128", at::ones({2}, at::kComplexDouble)}},
                  ErrorKind::kUnsupported);
  expect_rejected({{"ok", at::ones({2})}, {"undefined", at::Tensor()}}, ErrorKind::kShape);
  expect_rejected({{"__metadata__", at::ones({2})}}, ErrorKind::kShape);
  expect_rejected({{"sparse", at::ones({2, 2}).to_sparse()}}, ErrorKind::kUnsupported);
  expect_rejected({{"meta", at::empty({2}, at::TensorOptions().device(at::kMeta))}},
                  ErrorKind::kUnsupported);
  expect_rejected({{"bad\xff utf8", at::ones({2})}}, ErrorKind::kFormat);
}

// A write that fails halfway (here: the file size limit) removes its temp file and leaves the
// existing file as it was.
TEST(SafetensorsWriter, FailureMidwayLeavesExistingFileIntact) {
  ScratchDir dir;
  const std::string path = dir.file("keep.safetensors");
  write_safetensors(path, {{"x", at::arange(8, at::kFloat)}});
  const std::string before = testing::read_file(path);

  struct rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limited = saved;
  limited.rlim_cur = 64 * 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  Error e = capture_error([&] {
    write_safetensors(path, {{"small", at::ones({4})}, {"big", at::ones({1 << 20})}});
  });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);

  EXPECT_EQ(e.kind(), ErrorKind::kIo) << e.what();
  EXPECT_NE(std::string(e.what()).find("keep.safetensors"), std::string::npos) << e.what();
  EXPECT_EQ(testing::read_file(path), before);
  EXPECT_EQ(files_in(dir.path()), std::vector<std::string>{"keep.safetensors"});
}

TEST(SafetensorsWriter, MissingDirectoryIsIoError) {
  ScratchDir dir;
  Error e = capture_error([&] {
    write_safetensors(dir.file("no/such/dir/x.safetensors"), {{"x", at::ones({1})}});
  });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_NE(std::string(e.what()).find("x.safetensors"), std::string::npos);
}

TEST(SafetensorsWriter, ReplacingAMappedFileKeepsOldViewsValid) {
  ScratchDir dir;
  const std::string path = dir.file("swap.safetensors");
  write_safetensors(path, {{"x", at::full({256}, 1.0f)}});
  at::Tensor old_view = SafetensorsFile::open(path)->tensor("x");
  write_safetensors(path, {{"x", at::full({256}, 2.0f)}});
  EXPECT_TRUE(at::equal(old_view, at::full({256}, 1.0f)));
  EXPECT_TRUE(at::equal(SafetensorsFile::open(path)->tensor("x"), at::full({256}, 2.0f)));
  // Rewriting from a view of the file being replaced is safe too.
  write_safetensors(path, {{"x", SafetensorsFile::open(path)->tensor("x") * 3}});
  EXPECT_TRUE(at::equal(SafetensorsFile::open(path)->tensor("x"), at::full({256}, 6.0f)));
}

}  // namespace
}  // namespace qtrain

// qtrain's safetensors files against the reference Python package (tests/reference/
// safetensors_roundtrip.py), in both directions, bit exact.
#include "formats/safetensors/safetensors.h"
#include "tests/formats/safetensors_test_util.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace qtrain {
namespace {
using testing::bit_equal;
using testing::ScratchDir;

const std::map<std::string, std::string> kMetadata = {
    {"format", "pt"}, {"producer", "qtrain-test"}, {"unicode", "h\u00e9llo \u2713"}};

template <typename T, typename F>
at::Tensor from_index(at::ScalarType type, F value) {
  at::Tensor t = at::empty({3, 4}, at::TensorOptions().dtype(type));
  T* data = static_cast<T*>(t.data_ptr());
  for (int64_t k = 0; k < 12; ++k) data[k] = static_cast<T>(value(k));
  return t;
}

// Mirrors expected() in safetensors_roundtrip.py.
NamedTensors expected() {
  return {
      {"t_BOOL", from_index<bool>(at::kBool, [](int64_t k) { return k % 3 == 0; })},
      {"t_U8", from_index<uint8_t>(at::kByte, [](int64_t k) { return k * 20 + 7; })},
      {"t_I8", from_index<int8_t>(at::kChar, [](int64_t k) { return k * 10 - 60; })},
      {"t_I16", from_index<int16_t>(at::kShort, [](int64_t k) { return k * 3000 - 16000; })},
      {"t_U16", from_index<uint16_t>(at::kUInt16, [](int64_t k) { return k * 5000 + 3; })},
      {"t_I32", from_index<int32_t>(at::kInt, [](int64_t k) { return k * 100000000 - 600000000; })},
      {"t_U32", from_index<uint32_t>(at::kUInt32, [](int64_t k) { return k * 300000000 + 1; })},
      {"t_I64",
       from_index<int64_t>(at::kLong, [](int64_t k) { return k * 1000000000000 - 5000000000000; })},
      {"t_U64",
       from_index<uint64_t>(at::kUInt64, [](int64_t k) { return k * 1500000000000000000ULL + 5; })},
      {"t_F16", from_index<at::Half>(at::kHalf, [](int64_t k) { return k * 0.125f - 0.75f; })},
      {"t_F32", from_index<float>(at::kFloat, [](int64_t k) { return float(k) / 3.0f; })},
      {"t_F64", from_index<double>(at::kDouble, [](int64_t k) { return double(k) / 3.0 - 1.0; })},
      {"t_BF16",
       from_index<at::BFloat16>(at::kBFloat16, [](int64_t k) { return k * 0.25f - 1.5f; })},
      {"scalar_F32", at::scalar_tensor(3.5, at::kFloat)},
      {"empty_I32", at::zeros({0, 3}, at::kInt)},
  };
}

void run_script(const std::string& mode, const std::string& target) {
  std::string output;
  int status = testing::run_reference_script("safetensors_roundtrip.py", {mode, target}, &output);
  EXPECT_EQ(status, 0) << output;
}

TEST(SafetensorsInterop, ReferenceReadsOurFile) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  NamedTensors tensors = expected();
  // Non-contiguous views on the way in must not change what lands in the file.
  tensors[5].second = tensors[5].second.t().contiguous().t();
  tensors[11].second = tensors[11].second.t().contiguous().t();
  write_safetensors(dir.file("ours.safetensors"), tensors, kMetadata);
  run_script("check", dir.file("ours.safetensors"));
}

TEST(SafetensorsInterop, ReferenceReadsOurShardedCheckpoint) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  auto files =
      write_checkpoint(dir.path(), expected(), {.max_shard_bytes = 64, .metadata = kMetadata});
  ASSERT_GT(files.size(), 2u);
  run_script("check_sharded", dir.path());
}

TEST(SafetensorsInterop, WeReadReferenceFileBitExact) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const std::string path = dir.file("theirs.safetensors");
  run_script("write", path);
  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->metadata(), kMetadata);
  NamedTensors want = expected();
  ASSERT_EQ(file->names().size(), want.size());
  for (const auto& [name, tensor] : want) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(bit_equal(tensor, file->tensor(name)));
  }
}

}  // namespace
}  // namespace qtrain

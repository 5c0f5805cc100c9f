// Sharded checkpoints: write_checkpoint and CheckpointReader.
#include "core/error.h"
#include "formats/safetensors/safetensors.h"
#include "tests/formats/safetensors_test_util.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>

namespace qtrain {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;
using testing::bit_equal;
using testing::capture_error;
using testing::ScratchDir;

// Tensors of 0 to 400 bytes, mixed dtypes, one of them a non-contiguous view.
NamedTensors sample_tensors() {
  return {
      {"model.embed_tokens.weight", at::arange(40, at::kFloat).reshape({10, 4})},      // 160
      {"model.layers.0.norm.weight", at::ones({8}, at::kBFloat16)},                    // 16
      {"model.layers.0.q.weight", at::arange(100, at::kFloat).reshape({10, 10}).t()},  // 400
      {"model.layers.0.bias", at::arange(3, at::kLong)},                               // 24
      {"model.layers.0.empty", at::zeros({0, 5}, at::kHalf)},                          // 0
      {"model.layers.1.scale", at::scalar_tensor(2.5, at::kDouble)},                   // 8
      {"lm_head.weight", at::arange(30, at::kInt).reshape({5, 6})},                    // 120
  };
}

uint64_t total_bytes(const NamedTensors& tensors) {
  uint64_t total = 0;
  for (const auto& entry : tensors) total += entry.second.nbytes();
  return total;
}

void expect_same_tensors(const NamedTensors& expected, const CheckpointReader& reader) {
  std::vector<std::string> names;
  for (const auto& [name, tensor] : expected) {
    SCOPED_TRACE(name);
    names.push_back(name);
    ASSERT_TRUE(reader.contains(name));
    EXPECT_TRUE(bit_equal(tensor, reader.tensor(name)));
    EXPECT_EQ(reader.info(name).shape, tensor.sizes().vec());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(reader.names(), names);
}

json read_json(const std::string& path) {
  return json::parse(testing::read_file(path));
}

TEST(Checkpoint, SingleFileWhenEverythingFits) {
  ScratchDir dir;
  NamedTensors tensors = sample_tensors();
  for (uint64_t limit : {total_bytes(tensors), uint64_t{5'000'000'000}}) {
    std::string out = dir.file("fits" + std::to_string(limit));
    auto files = write_checkpoint(out, tensors, {.max_shard_bytes = limit});
    EXPECT_EQ(files, std::vector<std::string>{out + "/model.safetensors"});
    EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
    CheckpointReader reader = CheckpointReader::open_dir(out);
    expect_same_tensors(tensors, reader);
    EXPECT_EQ(reader.metadata().at("format"), "pt");
    EXPECT_EQ(reader.file_of("lm_head.weight"), out + "/model.safetensors");
  }
}

// Every split must read back as the unsharded checkpoint, keep the input order across shards,
// respect the limit except for lone oversized tensors, and be greedy (the next shard's first
// tensor did not fit in the previous one).
TEST(Checkpoint, ShardedEqualsUnsharded) {
  ScratchDir dir;
  NamedTensors tensors = sample_tensors();
  const uint64_t total = total_bytes(tensors);
  std::map<std::string, uint64_t> bytes_of;
  std::vector<std::string> input_order;
  for (const auto& [name, t] : tensors) {
    bytes_of[name] = t.nbytes();
    input_order.push_back(name);
  }
  for (uint64_t limit : {uint64_t{0}, uint64_t{1}, uint64_t{16}, uint64_t{100}, uint64_t{170},
                         uint64_t{399}, uint64_t{400}, uint64_t{500}, total - 1}) {
    SCOPED_TRACE("max_shard_bytes=" + std::to_string(limit));
    const std::string out = dir.file("limit" + std::to_string(limit));
    auto files = write_checkpoint(
        out, tensors, {.max_shard_bytes = limit, .metadata = {{"format", "pt"}, {"k", "v"}}});
    ASSERT_GE(files.size(), 3u);
    const size_t shards = files.size() - 1;
    EXPECT_EQ(files.back(), out + "/model.safetensors.index.json");

    json index = read_json(files.back());
    EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
    std::vector<std::string> order;
    uint64_t previous_bytes = 0;
    std::string previous_last;
    for (size_t i = 0; i < shards; ++i) {
      char expected_name[64];
      std::snprintf(expected_name, sizeof(expected_name), "model-%05zu-of-%05zu.safetensors", i + 1,
                    shards);
      EXPECT_EQ(files[i], out + "/" + expected_name);
      auto shard = SafetensorsFile::open(files[i]);
      EXPECT_EQ(shard->metadata().at("k"), "v");
      uint64_t shard_bytes = 0;
      for (const std::string& name : shard->names()) {
        order.push_back(name);
        shard_bytes += bytes_of[name];
        EXPECT_EQ(index["weight_map"][name], expected_name);
      }
      ASSERT_FALSE(shard->names().empty());
      if (shard->names().size() > 1) {
        EXPECT_LE(shard_bytes, limit);
      }
      if (i > 0) {
        EXPECT_GT(previous_bytes + bytes_of[shard->names().front()], limit)
            << shard->names().front() << " would have fit after " << previous_last;
      }
      previous_bytes = shard_bytes;
      previous_last = shard->names().back();
    }
    EXPECT_EQ(order, input_order);
    EXPECT_EQ(index["weight_map"].size(), tensors.size());

    CheckpointReader reader = CheckpointReader::open_dir(out);
    expect_same_tensors(tensors, reader);
    EXPECT_EQ(reader.metadata().at("k"), "v");
  }
}

TEST(Checkpoint, OversizedTensorGetsItsOwnShard) {
  ScratchDir dir;
  NamedTensors tensors = {{"a", at::ones({4}, at::kByte)},
                          {"b", at::ones({4}, at::kByte)},
                          {"big", at::ones({100}, at::kByte)},
                          {"c", at::ones({4}, at::kByte)},
                          {"d", at::ones({4}, at::kByte)}};
  auto files = write_checkpoint(dir.path(), tensors, {.max_shard_bytes = 10});
  ASSERT_EQ(files.size(), 4u);
  json index = read_json(dir.file("model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"], json({{"a", "model-00001-of-00003.safetensors"},
                                       {"b", "model-00001-of-00003.safetensors"},
                                       {"big", "model-00002-of-00003.safetensors"},
                                       {"c", "model-00003-of-00003.safetensors"},
                                       {"d", "model-00003-of-00003.safetensors"}}));
  EXPECT_EQ(index["metadata"], json({{"total_size", 116}}));
  // Laid out as transformers writes it: sorted keys, two-space indent, final newline.
  std::string text = testing::read_file(dir.file("model.safetensors.index.json"));
  EXPECT_EQ(text, index.dump(2) + "\n");
}

TEST(Checkpoint, OtherBaseNameAndNewDirectory) {
  ScratchDir dir;
  const std::string out = dir.file("nested/adapter");
  NamedTensors tensors = sample_tensors();
  auto files =
      write_checkpoint(out, tensors, {.max_shard_bytes = 200, .base_name = "adapter_model"});
  EXPECT_EQ(files.back(), out + "/adapter_model.safetensors.index.json");
  EXPECT_EQ(files.front(), out + "/adapter_model-00001-of-0000" + std::to_string(files.size() - 1) +
                               ".safetensors");
  expect_same_tensors(tensors, CheckpointReader::open_dir(out, "adapter_model"));
  EXPECT_EQ(capture_error([&] { CheckpointReader::open_dir(out); }).kind(), ErrorKind::kIo);
}

TEST(Checkpoint, NoTensors) {
  ScratchDir dir;
  auto files = write_checkpoint(dir.path(), {}, {.max_shard_bytes = 0});
  EXPECT_EQ(files, std::vector<std::string>{dir.file("model.safetensors")});
  EXPECT_TRUE(CheckpointReader::open_dir(dir.path()).names().empty());
}

TEST(Checkpoint, DuplicateNamesAcrossShardsWriteNothing) {
  ScratchDir dir;
  const std::string out = dir.file("out");
  NamedTensors tensors = {{"a", at::ones({100})}, {"b", at::ones({100})}, {"a", at::ones({100})}};
  Error e = capture_error([&] { write_checkpoint(out, tensors, {.max_shard_bytes = 400}); });
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_FALSE(fs::exists(out));
}

TEST(Checkpoint, OpenFileAndLookups) {
  ScratchDir dir;
  write_safetensors(dir.file("x.safetensors"), {{"w", at::ones({2})}}, {{"format", "mlx"}});
  CheckpointReader reader = CheckpointReader::open_file(dir.file("x.safetensors"));
  EXPECT_EQ(reader.names(), std::vector<std::string>{"w"});
  EXPECT_EQ(reader.metadata().at("format"), "mlx");
  EXPECT_EQ(reader.file_of("w"), dir.file("x.safetensors"));
  EXPECT_EQ(reader.info("w").dtype, "F32");
  for (auto lookup : {+[](const CheckpointReader& r) { r.tensor("v"); },
                      +[](const CheckpointReader& r) { r.info("v"); },
                      +[](const CheckpointReader& r) { r.file_of("v"); }}) {
    Error e = capture_error([&] { lookup(reader); });
    EXPECT_EQ(e.kind(), ErrorKind::kShape);
    EXPECT_NE(std::string(e.what()).find("'v'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("x.safetensors"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, SingleFileWinsOverIndex) {
  ScratchDir dir;
  write_checkpoint(dir.path(), {{"sharded", at::ones({100})}, {"b", at::ones({100})}},
                   {.max_shard_bytes = 400});
  write_safetensors(dir.file("model.safetensors"), {{"single", at::ones({1})}});
  EXPECT_EQ(CheckpointReader::open_dir(dir.path()).names(), std::vector<std::string>{"single"});
}

// 200k tensors named by the index, half in each shard: every lookup of the checks stays
// logarithmic (the bench, tools/bench/bench_safetensors.cpp, times 1M).
TEST(Checkpoint, IndexOfManyTensorsOpens) {
  constexpr int kTensors = 200'000;
  ScratchDir dir;
  std::string headers[2], weight_map;
  for (int i = 0; i < kTensors; ++i) {
    const std::string name = "t" + std::to_string(i);
    const std::string shard =
        i % 2 == 0 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    headers[i % 2] += (headers[i % 2].empty() ? "{\"" : ",\"") + name +
                      "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}";
    weight_map += (weight_map.empty() ? "\"" : ",\"") + name + "\":\"" + shard + "\"";
  }
  testing::write_file(dir.file("model-00001-of-00002.safetensors"),
                      testing::raw_safetensors(headers[0] + "}"));
  testing::write_file(dir.file("model-00002-of-00002.safetensors"),
                      testing::raw_safetensors(headers[1] + "}"));
  testing::write_file(dir.file("model.safetensors.index.json"),
                      "{\"metadata\":{},\"weight_map\":{" + weight_map + "}}");

  const CheckpointReader reader = CheckpointReader::open_dir(dir.path());
  EXPECT_EQ(reader.names().size(), static_cast<size_t>(kTensors));
  EXPECT_EQ(reader.file_of("t199999"), dir.file("model-00002-of-00002.safetensors"));
  EXPECT_EQ(reader.info("t4").shape, std::vector<int64_t>{0});
}

class BrokenCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    // Shard 1 holds a and b, shard 2 holds c.
    files_ = write_checkpoint(
        dir_.path(), {{"a", at::ones({100})}, {"b", at::ones({100})}, {"c", at::ones({100})}},
        {.max_shard_bytes = 800});
    ASSERT_EQ(files_.size(), 3u);
    index_path_ = files_.back();
    index_ = read_json(index_path_);
  }
  void write_index(const std::string& text) { testing::write_file(index_path_, text); }
  void write_index(const json& index) { write_index(index.dump()); }
  Error open_error() {
    return capture_error([&] { CheckpointReader::open_dir(dir_.path()); });
  }
  void expect_error(ErrorKind kind, const std::string& file, const std::string& also = "") {
    Error e = open_error();
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
    if (!also.empty()) {
      EXPECT_NE(std::string(e.what()).find(also), std::string::npos) << e.what();
    }
  }

  ScratchDir dir_;
  std::vector<std::string> files_;
  std::string index_path_;
  json index_;
};

TEST_F(BrokenCheckpoint, IntactOpens) {
  expect_same_tensors({{"a", at::ones({100})}, {"b", at::ones({100})}, {"c", at::ones({100})}},
                      CheckpointReader::open_dir(dir_.path()));
}

TEST_F(BrokenCheckpoint, NeitherFileNamesTheDirectory) {
  ScratchDir empty;
  Error e = capture_error([&] { CheckpointReader::open_dir(empty.path()); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_NE(std::string(e.what()).find(empty.path()), std::string::npos) << e.what();
  e = capture_error([&] { CheckpointReader::open_dir(empty.file("missing")); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
}

TEST_F(BrokenCheckpoint, MissingShard) {
  fs::remove(files_[1]);
  expect_error(ErrorKind::kIo, files_[1]);
}

TEST_F(BrokenCheckpoint, IndexPointsAtWrongShard) {
  index_["weight_map"]["c"] = "model-00001-of-00002.safetensors";
  write_index(index_);
  expect_error(ErrorKind::kFormat, "'c'");
}

TEST_F(BrokenCheckpoint, TensorMissingFromWeightMap) {
  index_["weight_map"].erase("b");
  write_index(index_);
  expect_error(ErrorKind::kFormat, files_[0], "'b'");
}

TEST_F(BrokenCheckpoint, WeightMapNamesAbsentTensor) {
  index_["weight_map"]["ghost"] = "model-00002-of-00002.safetensors";  // holds only c
  write_index(index_);
  expect_error(ErrorKind::kFormat, index_path_, "'ghost'");
}

TEST_F(BrokenCheckpoint, CorruptShard) {
  std::string bytes = testing::read_file(files_[1]);
  testing::write_file(files_[1], bytes.substr(0, bytes.size() - 1));
  expect_error(ErrorKind::kFormat, files_[1]);
}

TEST_F(BrokenCheckpoint, MalformedIndex) {
  const std::vector<std::string> bad = {
      "",
      "{",
      "[]",
      "{\"metadata\":{}}",
      "{\"weight_map\":[]}",
      "{\"weight_map\":{\"a\":1}}",
      "{\"metadata\":[],\"weight_map\":{}}",
      "{\"weight_map\":{},\"weight_map\":{}}",
      "{\"weight_map\":{\"a\":\"x\",\"a\":\"x\"}}",
      "{\"weight_map\":{\"a\":\"\"}}",
      "{\"weight_map\":{\"a\":\"../model-00001-of-00002.safetensors\"}}",
      "{\"weight_map\":{\"a\":\"/etc/passwd\"}}",
      std::string("{\"weight_map\":{}}\0trailing", 26),
  };
  for (const std::string& text : bad) {
    SCOPED_TRACE(text);
    write_index(text);
    expect_error(ErrorKind::kFormat, index_path_);
  }
}

TEST_F(BrokenCheckpoint, IndexIsADirectory) {
  fs::remove(index_path_);
  fs::create_directory(index_path_);
  expect_error(ErrorKind::kIo, index_path_);
}

}  // namespace
}  // namespace qtrain

// GGUF v3 writer and HF -> GGUF export.
//
// The writer tests compare whole files with bytes spelled out from the published layout
// (reference/formats.md §7.1); the permutation tests check the llama Q/K row permutation as a
// mathematical identity; the export tests read our files back with PyPI's `gguf` package
// (tests/reference/read_gguf.py), which also compares every tensor with the HF checkpoint.
#include "formats/gguf/gguf_writer.h"

#include "core/error.h"
#include "export/gguf_export.h"
#include "formats/safetensors/safetensors.h"
#include "models/config.h"
#include "models/tiny_model.h"
#include "tests/support/le_bytes.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <map>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using testing::Bytes;
using testing::ScratchDir;

std::string hex_diff(const std::string& got, const std::string& want) {
  if (got.size() != want.size()) {
    return "size " + std::to_string(got.size()) + " != " + std::to_string(want.size());
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) return "first difference at byte " + std::to_string(i);
  }
  return "";
}

template <typename F>
ErrorKind error_kind_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no qtrain::Error thrown";
  return ErrorKind::kInternal;
}

// Files in `dir` (to check that failed writes leave no temp file behind).
std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  return names;
}

TEST(GgufWriterTest, SmallFileMatchesTheLayoutByteForByte) {
  ScratchDir dir;
  GgufWriter w;
  w.add_u32("a.n", 7);
  w.add_array("a.list", std::vector<std::string>{"x", "yz"});
  at::Tensor m = at::arange(6, at::kFloat).reshape({2, 3});  // ne = [3, 2]
  at::Tensor v = at::tensor({1.0f, -2.0f, 0.5f});            // ne = [3], as F16
  w.add_tensor("m", m, GgmlType::kF32);
  w.add_tensor("v", v, GgmlType::kF16);
  w.write(dir.file("small.gguf"));

  // Header: 4 + 4 + 8 + 8 = 24 bytes.
  Bytes b;
  b.raw("GGUF", 4).u32(3).u64(2).u64(2);
  // KV "a.n": key 8+3, type 4, value 4 = 19 -> 43.
  b.str("a.n").u32(4).u32(7);
  // KV "a.list": key 8+6, type 9, elem type 8, count 2, "x" 8+1, "yz" 8+2 = 49 -> 92.
  b.str("a.list").u32(9).u32(8).u64(2).str("x").str("yz");
  // Tensor info "m": name 8+1, n_dims 4, ne 2x8, type 4, offset 8 = 41 -> 133.
  b.str("m").u32(2).u64(3).u64(2).u32(0).u64(0);
  // Tensor info "v": 9 + 4 + 8 + 4 + 8 = 33 -> 166. m takes 24 bytes, padded to 32: v at 32.
  b.str("v").u32(1).u64(3).u32(1).u64(32);
  ASSERT_EQ(b.s.size(), 166u);
  b.zeros(192 - 166);  // data starts at the next multiple of 32
  for (int i = 0; i < 6; ++i) b.f32(static_cast<float>(i));
  b.zeros(32 - 24);
  b.u16(0x3C00).u16(0xC000).u16(0x3800);  // 1, -2, 0.5 in binary16
  b.zeros(32 - 6);                        // the last tensor is padded too
  ASSERT_EQ(b.s.size(), 256u);

  const std::string got = testing::read_file(dir.file("small.gguf"));
  EXPECT_EQ(got, b.s) << hex_diff(got, b.s);
  EXPECT_EQ(listing(dir.path()), std::vector<std::string>{"small.gguf"});
}

TEST(GgufWriterTest, EveryScalarTypeIsEncodedWithItsTypeId) {
  ScratchDir dir;
  GgufWriter w;
  w.add_u8("u8", 0xAB);
  w.add_i8("i8", -2);
  w.add_u16("u16", 0xBEEF);
  w.add_i16("i16", -3);
  w.add_u32("u32", 0xDEADBEEF);
  w.add_i32("i32", -4);
  w.add_f32("f32", 1.5f);
  w.add_bool("bool", true);
  w.add_string("str", "héllo");  // UTF-8: 6 bytes
  w.add_u64("u64", 0x0123456789ABCDEFull);
  w.add_i64("i64", -5);
  w.add_f64("f64", -0.25);
  w.add_array("arr.i32", std::vector<int32_t>{1, -1});
  w.add_array("arr.f32", std::vector<float>{0.5f});
  w.add_bool_array("arr.bool", {true, false});
  w.add_array("arr.u64", std::vector<uint64_t>{});
  EXPECT_EQ(w.kv_count(), 16u);
  w.write(dir.file("kv.gguf"));

  Bytes b;
  b.raw("GGUF", 4).u32(3).u64(0).u64(16);
  b.str("u8").u32(0).u8(0xAB);
  b.str("i8").u32(1).u8(0xFE);
  b.str("u16").u32(2).u16(0xBEEF);
  b.str("i16").u32(3).u16(0xFFFD);
  b.str("u32").u32(4).u32(0xDEADBEEF);
  b.str("i32").u32(5).u32(0xFFFFFFFC);
  b.str("f32").u32(6).u32(0x3FC00000);
  b.str("bool").u32(7).u8(1);
  b.str("str").u32(8).u64(6).raw("h\xC3\xA9llo", 6);
  b.str("u64").u32(10).u64(0x0123456789ABCDEFull);
  b.str("i64").u32(11).u64(0xFFFFFFFFFFFFFFFBull);
  b.str("f64").u32(12).u64(0xBFD0000000000000ull);
  b.str("arr.i32").u32(9).u32(5).u64(2).u32(1).u32(0xFFFFFFFF);
  b.str("arr.f32").u32(9).u32(6).u64(1).f32(0.5f);
  b.str("arr.bool").u32(9).u32(7).u64(2).u8(1).u8(0);
  b.str("arr.u64").u32(9).u32(10).u64(0);
  // No tensors: the file still ends padded to the alignment.
  b.zeros((32 - b.s.size() % 32) % 32);
  const std::string got = testing::read_file(dir.file("kv.gguf"));
  EXPECT_EQ(got, b.s) << hex_diff(got, b.s);
}

TEST(GgufWriterTest, CustomAlignmentPadsHeaderAndEveryTensor) {
  ScratchDir dir;
  GgufWriter w;
  w.add_u32("general.alignment", 64);
  EXPECT_EQ(w.alignment(), 64u);
  w.add_tensor("a", at::ones({5}), GgmlType::kF32);           // 20 bytes -> 64
  w.add_tensor("b", at::ones({2, 40}), GgmlType::kF16);       // 160 bytes -> 192
  w.add_tensor("c", at::ones({1, 1, 1, 3}), GgmlType::kF32);  // 12 bytes -> 64
  EXPECT_EQ(w.tensor_offsets(), (std::vector<uint64_t>{0, 64, 256}));
  w.write(dir.file("aligned.gguf"));

  // Header: 24 + kv ("general.alignment": 8+17 + 4 + 4 = 33) = 57;
  // infos: a 9+4+8+4+8 = 33 -> 90; b 9+4+16+4+8 = 41 -> 131; c 9+4+32+4+8 = 57 -> 188.
  // Data starts at 192 (next multiple of 64); file = 192 + 64 + 192 + 64 = 512.
  const std::string got = testing::read_file(dir.file("aligned.gguf"));
  ASSERT_EQ(got.size(), 512u);
  Bytes info_c;
  info_c.str("c").u32(4).u64(3).u64(1).u64(1).u64(1).u32(0).u64(256);
  EXPECT_EQ(got.substr(188 - 57, 57), info_c.s);
  EXPECT_EQ(got.substr(188, 4), std::string(4, '\0'));
  float first;
  std::memcpy(&first, got.data() + 192, 4);
  EXPECT_EQ(first, 1.0f);
  EXPECT_EQ(got.substr(192 + 20, 44), std::string(44, '\0'));
  EXPECT_EQ(got.substr(192 + 64 + 160, 32), std::string(32, '\0'));
  EXPECT_EQ(got.substr(192 + 256 + 12, 52), std::string(52, '\0'));
}

TEST(GgufWriterTest, F16RoundsToNearestEven) {
  ScratchDir dir;
  // 1 + 2^-11 lies halfway between 1 (0x3C00) and 1 + 2^-10 (0x3C01): ties go to the even 0x3C00;
  // 1 + 3*2^-11 lies halfway between 0x3C01 and 0x3C02: ties go to 0x3C02. 65504 is the largest
  // finite half (0x7BFF); 2^-24 is the smallest subnormal (0x0001); 1e-9 underflows to 0.
  const std::vector<float> values = {1.0f + std::ldexp(1.0f, -11),
                                     1.0f + 3 * std::ldexp(1.0f, -11),
                                     65504.0f,
                                     std::ldexp(1.0f, -24),
                                     1e-9f,
                                     -0.0f};
  GgufWriter w;
  w.add_tensor("h", at::tensor(values), GgmlType::kF16);
  w.write(dir.file("h.gguf"));
  const std::string got = testing::read_file(dir.file("h.gguf"));
  const size_t data = got.size() - 32;  // one 12-byte tensor padded to 32 at the end
  Bytes want;
  want.u16(0x3C00).u16(0x3C02).u16(0x7BFF).u16(0x0001).u16(0x0000).u16(0x8000);
  EXPECT_EQ(got.substr(data, 12), want.s);
}

TEST(GgufWriterTest, TensorsAreProducedOnceEachInOrderWhileWriting) {
  ScratchDir dir;
  std::vector<std::string> calls;
  GgufWriter w;
  for (const char* name : {"first", "second", "third"}) {
    w.add_tensor(name, {4, 8}, GgmlType::kF16, [&calls, name] {
      calls.push_back(name);
      return at::full({4, 8}, 2.0, at::kBFloat16);
    });
  }
  EXPECT_TRUE(calls.empty());
  w.write(dir.file("s.gguf"));
  EXPECT_EQ(calls, (std::vector<std::string>{"first", "second", "third"}));
}

TEST(GgufWriterTest, LargeTensorsAreWrittenInSlicesWithTheSameBytes) {
  ScratchDir dir;
  // 2^25 elements: more than one 16 Mi-element slice.
  at::Tensor big = at::randn({1 << 12, 1 << 13}, at::kFloat);
  GgufWriter w;
  w.add_tensor("big", big, GgmlType::kF16);
  w.write(dir.file("big.gguf"));
  const std::string got = testing::read_file(dir.file("big.gguf"));
  const size_t nbytes = size_t{2} << 25;
  at::Tensor half = big.to(at::kHalf);
  ASSERT_GE(got.size(), nbytes);
  EXPECT_EQ(std::memcmp(got.data() + got.size() - nbytes, half.data_ptr(), nbytes), 0);
}

TEST(GgufWriterTest, RejectsBadMetadata) {
  GgufWriter w;
  w.add_u32("k", 1);
  EXPECT_EQ(error_kind_of([&] { w.add_string("k", "again"); }), ErrorKind::kFormat);
  EXPECT_EQ(error_kind_of([&] { w.add_u32("", 1); }), ErrorKind::kFormat);
  EXPECT_EQ(error_kind_of([&] { w.add_u64("general.alignment", 32); }), ErrorKind::kFormat);
  EXPECT_EQ(error_kind_of([&] { w.add_u32("general.alignment", 48); }), ErrorKind::kFormat);
  EXPECT_EQ(error_kind_of([&] { w.add_u32("general.alignment", 0); }), ErrorKind::kFormat);
  EXPECT_EQ(w.alignment(), 32u);
  EXPECT_EQ(w.kv_count(), 1u);
}

TEST(GgufWriterTest, RejectsBadTensorInfos) {
  GgufWriter w;
  const std::string name63(63, 'n');
  w.add_tensor(name63, at::ones({2}), GgmlType::kF32);
  EXPECT_EQ(error_kind_of([&] { w.add_tensor(name63, at::ones({2}), GgmlType::kF32); }),
            ErrorKind::kFormat);
  EXPECT_EQ(error_kind_of([&] { w.add_tensor(name63 + "x", at::ones({2}), GgmlType::kF32); }),
            ErrorKind::kFormat);
  EXPECT_EQ(error_kind_of([&] {
              w.add_tensor("five", at::ones({1, 1, 1, 1, 2}), GgmlType::kF32);
            }),
            ErrorKind::kFormat);
  EXPECT_EQ(error_kind_of([&] { w.add_tensor("scalar", at::ones({}), GgmlType::kF32); }),
            ErrorKind::kFormat);
  // Q4_K blocks are 256 elements along ne[0].
  EXPECT_EQ(error_kind_of([&] {
              w.add_tensor("q", {4, 100}, GgmlType::kQ4_K, [] { return at::ones({4, 100}); });
            }),
            ErrorKind::kShape);
  EXPECT_EQ(error_kind_of([&] {
              w.add_tensor("bad-type", {2}, static_cast<GgmlType>(99),
                           [] { return at::ones({2}); });
            }),
            ErrorKind::kUnsupported);
  EXPECT_EQ(w.tensor_count(), 1u);
}

TEST(GgufWriterTest, BlockGeometryOfKnownTypes) {
  EXPECT_EQ(ggml_nbytes(GgmlType::kF32, {3, 2}), 24u);
  EXPECT_EQ(ggml_nbytes(GgmlType::kF16, {3, 2}), 12u);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ8_0, {64, 3}), 2u * 34 * 3);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ4_0, {32}), 18u);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ4_K, {512, 2}), 2u * 144 * 2);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ6_K, {256}), 210u);
  EXPECT_EQ(ggml_type_name(GgmlType::kQ6_K), "Q6_K");
}

// A failed write leaves neither the target nor a temp file; an existing file stays as it was.
void expect_failed_write_leaves_nothing(GgufWriter& w, ErrorKind kind) {
  ScratchDir dir;
  testing::write_file(dir.file("out.gguf"), "old contents");
  EXPECT_EQ(error_kind_of([&] { w.write(dir.file("out.gguf")); }), kind);
  EXPECT_EQ(listing(dir.path()), std::vector<std::string>{"out.gguf"});
  EXPECT_EQ(testing::read_file(dir.file("out.gguf")), "old contents");
}

TEST(GgufWriterTest, F16OfIntegersFailsWithoutTouchingTheTarget) {
  GgufWriter w;
  w.add_tensor("ok", at::ones({4}), GgmlType::kF32);
  w.add_tensor("ints", at::arange(4, at::kInt), GgmlType::kF16);
  expect_failed_write_leaves_nothing(w, ErrorKind::kUnsupported);
}

TEST(GgufWriterTest, ProducedShapeMustMatchTheRegisteredOne) {
  GgufWriter w;
  w.add_tensor("t", {2, 3}, GgmlType::kF32, [] { return at::ones({3, 2}); });
  expect_failed_write_leaves_nothing(w, ErrorKind::kShape);
}

TEST(GgufWriterTest, TypesWithoutEncoderFailAtWrite) {
  GgufWriter w;
  w.add_tensor("q", {1, 256}, GgmlType::kQ2_K, [] { return at::ones({1, 256}); });
  expect_failed_write_leaves_nothing(w, ErrorKind::kUnsupported);
}

TEST(GgufWriterTest, MissingDirectoryIsAnIoError) {
  GgufWriter w;
  EXPECT_EQ(error_kind_of([&] { w.write("/nonexistent-qtrain-dir/x.gguf"); }), ErrorKind::kIo);
}

// ---------------------------------------------------------------------------------------------
// The llama Q/K permutation.

TEST(GgufPermutationTest, InverseUndoesIt) {
  at::Tensor w = at::randn({4 * 16, 24});  // 4 heads of head_dim 16
  at::Tensor b = at::randn({4 * 16});
  EXPECT_TRUE(at::equal(unpermute_qk_from_gguf(permute_qk_for_gguf(w, 4), 4), w));
  EXPECT_TRUE(at::equal(permute_qk_for_gguf(unpermute_qk_from_gguf(w, 4), 4), w));
  EXPECT_TRUE(at::equal(unpermute_qk_from_gguf(permute_qk_for_gguf(b, 4), 4), b));
  EXPECT_FALSE(at::equal(permute_qk_for_gguf(w, 4), w));
}

TEST(GgufPermutationTest, RowTwoJPlusTComesFromRowTHalfPlusJ) {
  const int64_t heads = 3, hd = 8, cols = 5;
  at::Tensor w = at::arange(heads * hd * cols, at::kFloat).reshape({heads * hd, cols});
  at::Tensor p = permute_qk_for_gguf(w, heads);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t j = 0; j < hd / 2; ++j) {
      for (int64_t t = 0; t < 2; ++t) {
        EXPECT_TRUE(at::equal(p[h * hd + 2 * j + t], w[h * hd + t * hd / 2 + j]))
            << "head " << h << " j " << j << " t " << t;
      }
    }
  }
  EXPECT_EQ(error_kind_of([&] { permute_qk_for_gguf(at::ones({12, 2}), 4); }), ErrorKind::kShape);
}

// Why the permutation exists: rotating pairs (j, j + d/2) of q (HF) and then permuting gives the
// same vector as permuting q first and rotating pairs (2j, 2j + 1) (ggml's ROPE_TYPE_NORM).
TEST(GgufPermutationTest, TurnsRotateHalfRopeIntoInterleavedRope) {
  const int64_t heads = 2, hd = 16;
  at::Tensor q = at::randn({heads * hd}, at::kDouble);
  at::Tensor angle = at::rand({hd / 2}, at::kDouble) * 6.0;
  at::Tensor c = angle.cos(), s = angle.sin();

  at::Tensor hf = q.view({heads, hd});
  at::Tensor x1 = hf.narrow(1, 0, hd / 2), x2 = hf.narrow(1, hd / 2, hd / 2);
  at::Tensor hf_rotated = at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, 1).reshape({-1});

  at::Tensor g = permute_qk_for_gguf(q, heads).view({heads, hd / 2, 2});
  at::Tensor even = g.select(2, 0), odd = g.select(2, 1);
  at::Tensor gguf_rotated = at::stack({even * c - odd * s, odd * c + even * s}, 2).reshape({-1});

  EXPECT_TRUE(at::allclose(permute_qk_for_gguf(hf_rotated, heads), gguf_rotated, 1e-12, 1e-12));
}

// ---------------------------------------------------------------------------------------------
// HF checkpoint -> GGUF, read back with the `gguf` package.

using nlohmann::json;

std::string tiny_model(const ScratchDir& dir, const std::string& arch,
                       const std::string& dtype = "float32", uint64_t max_shard_bytes = 0) {
  TinyModelOptions options;
  options.arch = arch;
  options.preset = "micro";
  options.seed = 7;
  options.dtype = dtype;
  options.max_shard_bytes = max_shard_bytes;
  const std::string hf_dir = dir.file(arch);
  write_tiny_model(options, hf_dir);
  return hf_dir;
}

// Replaces the rope settings in hf_dir/config.json.
void set_rope_scaling(const std::string& hf_dir, const json& block) {
  const std::string path = hf_dir + "/config.json";
  json config = json::parse(testing::read_file(path));
  config.erase("rope_parameters");
  config["rope_scaling"] = block;
  testing::write_file(path, config.dump(2));
}

// Runs tests/reference/read_gguf.py, which also checks layout, data and vocabulary.
json read_back(const std::string& gguf_path, const std::string& hf_dir) {
  std::string output;
  const int rc = testing::run_reference_script("read_gguf.py", {gguf_path, hf_dir}, &output);
  const size_t brace = output.find('{');
  json result = brace == std::string::npos ? json()
                                           : json::parse(output.substr(brace), nullptr,
                                                         /*allow_exceptions=*/false);
  EXPECT_EQ(rc, 0) << output.substr(0, 4000);
  EXPECT_TRUE(result.is_object()) << output.substr(0, 4000);
  return result;
}

struct Entry {
  std::string type;
  json value;
};

std::map<std::string, Entry> metadata_of(const json& out) {
  std::map<std::string, Entry> m;
  for (const auto& kv : out["metadata"]) m[kv["key"]] = {kv["type"], kv["value"]};
  return m;
}

std::map<std::string, json> tensors_of(const json& out) {
  std::map<std::string, json> t;
  for (const auto& e : out["tensors"]) t[e["name"]] = e;
  return t;
}

void expect_u32(const std::map<std::string, Entry>& m, const std::string& key, int64_t value) {
  ASSERT_TRUE(m.count(key)) << key;
  EXPECT_EQ(m.at(key).type, "UINT32") << key;
  EXPECT_EQ(m.at(key).value.get<int64_t>(), value) << key;
}

void expect_f32(const std::map<std::string, Entry>& m, const std::string& key, double value) {
  ASSERT_TRUE(m.count(key)) << key;
  EXPECT_EQ(m.at(key).type, "FLOAT32") << key;
  EXPECT_EQ(m.at(key).value.get<double>(), static_cast<double>(static_cast<float>(value))) << key;
}

void expect_string(const std::map<std::string, Entry>& m, const std::string& key,
                   const std::string& value) {
  ASSERT_TRUE(m.count(key)) << key;
  EXPECT_EQ(m.at(key).type, "STRING") << key;
  EXPECT_EQ(m.at(key).value.get<std::string>(), value) << key;
}

// The metadata every export writes, against the config it came from.
void expect_model_metadata(const json& out, const ModelConfig& c, const std::string& arch,
                           int64_t file_type, const std::string& name, bool quantized = false) {
  EXPECT_EQ(out["version"], 3);
  const auto m = metadata_of(out);
  EXPECT_EQ(out["kv_count"].get<size_t>(), m.size());
  expect_string(m, "general.architecture", arch);
  expect_string(m, "general.name", name);
  expect_u32(m, "general.file_type", file_type);
  if (quantized) {
    expect_u32(m, "general.quantization_version", 2);
  } else {
    EXPECT_FALSE(m.count("general.quantization_version"));
  }
  EXPECT_FALSE(m.count("general.alignment"));
  expect_u32(m, arch + ".block_count", c.num_hidden_layers);
  expect_u32(m, arch + ".context_length", c.max_position_embeddings);
  expect_u32(m, arch + ".embedding_length", c.hidden_size);
  expect_u32(m, arch + ".feed_forward_length", c.intermediate_size);
  expect_u32(m, arch + ".attention.head_count", c.num_attention_heads);
  expect_u32(m, arch + ".attention.head_count_kv", c.num_key_value_heads);
  expect_u32(m, arch + ".attention.key_length", c.head_dim);
  expect_u32(m, arch + ".attention.value_length", c.head_dim);
  expect_u32(m, arch + ".rope.dimension_count", c.head_dim);
  expect_u32(m, arch + ".vocab_size", c.vocab_size);
  expect_f32(m, arch + ".rope.freq_base", c.rope_theta);
  expect_f32(m, arch + ".attention.layer_norm_rms_epsilon", c.rms_norm_eps);
}

void expect_tokenizer_metadata(const json& out, const ModelConfig& c) {
  const auto m = metadata_of(out);
  expect_string(m, "tokenizer.ggml.model", "llama");
  expect_string(m, "tokenizer.ggml.pre", "default");
  ASSERT_TRUE(m.count("tokenizer.ggml.tokens"));
  EXPECT_EQ(m.at("tokenizer.ggml.tokens").type, "ARRAY[STRING]");
  EXPECT_EQ(m.at("tokenizer.ggml.tokens").value["count"], c.vocab_size);
  EXPECT_EQ(m.at("tokenizer.ggml.scores").type, "ARRAY[FLOAT32]");
  EXPECT_EQ(m.at("tokenizer.ggml.scores").value["count"], c.vocab_size);
  EXPECT_EQ(m.at("tokenizer.ggml.token_type").type, "ARRAY[INT32]");
  EXPECT_EQ(m.at("tokenizer.ggml.token_type").value["count"], c.vocab_size);
  ASSERT_TRUE(c.bos_token_id.has_value());
  expect_u32(m, "tokenizer.ggml.bos_token_id", *c.bos_token_id);
  expect_u32(m, "tokenizer.ggml.eos_token_id", c.eos_token_ids.at(0));
  ASSERT_TRUE(m.count("tokenizer.ggml.unknown_token_id"));
  EXPECT_EQ(m.at("tokenizer.ggml.unknown_token_id").type, "UINT32");
  ASSERT_TRUE(m.count("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(m.at("tokenizer.ggml.add_bos_token").type, "BOOL");
  EXPECT_EQ(m.at("tokenizer.ggml.add_eos_token").type, "BOOL");
}

void expect_tensor(const std::map<std::string, json>& t, const std::string& name,
                   std::vector<int64_t> ne, const std::string& type) {
  ASSERT_TRUE(t.count(name)) << name;
  EXPECT_EQ(t.at(name)["shape"].get<std::vector<int64_t>>(), ne) << name;
  EXPECT_EQ(t.at(name)["type"], type) << name;
}

void expect_checks_pass(const json& out) {
  for (const char* kind : {"layout", "data", "tokenizer"}) {
    EXPECT_TRUE(out["checks"][kind].empty()) << kind << ": " << out["checks"][kind].dump(1);
  }
}

TEST(GgufExportTest, LlamaWithLlama3RopeAsF32) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const std::string hf = tiny_model(dir, "llama");
  // orig 1024 with head_dim 16 and theta 1e4 puts frequencies in all three llama3 bands.
  set_rope_scaling(hf, {{"rope_type", "llama3"},
                        {"factor", 8.0},
                        {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 1024}});
  const ModelConfig c = ModelConfig::from_file(hf + "/config.json");
  ASSERT_EQ(c.rope_scaling.type, RopeType::kLlama3);
  export_gguf(hf, dir.file("llama.gguf"), {.outtype = GgufOutType::kF32});

  const json out = read_back(dir.file("llama.gguf"), hf);
  ASSERT_TRUE(out.is_object());
  expect_checks_pass(out);
  expect_model_metadata(out, c, "llama", 0, "llama");
  expect_tokenizer_metadata(out, c);
  EXPECT_FALSE(metadata_of(out).count("llama.rope.scaling.type"));

  const auto t = tensors_of(out);
  const int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size, hd = c.head_dim;
  EXPECT_EQ(t.size(), 1 + 2 + 1 + 9 * static_cast<size_t>(c.num_hidden_layers));
  expect_tensor(t, "rope_freqs.weight", {hd / 2}, "F32");
  expect_tensor(t, "token_embd.weight", {H, V}, "F32");
  expect_tensor(t, "output_norm.weight", {H}, "F32");
  expect_tensor(t, "output.weight", {H, V}, "F32");
  expect_tensor(t, "blk.0.attn_norm.weight", {H}, "F32");
  expect_tensor(t, "blk.0.attn_q.weight", {H, c.num_attention_heads * hd}, "F32");
  expect_tensor(t, "blk.0.attn_k.weight", {H, c.num_key_value_heads * hd}, "F32");
  expect_tensor(t, "blk.0.attn_v.weight", {H, c.num_key_value_heads * hd}, "F32");
  expect_tensor(t, "blk.0.attn_output.weight", {c.num_attention_heads * hd, H}, "F32");
  expect_tensor(t, "blk.0.ffn_norm.weight", {H}, "F32");
  expect_tensor(t, "blk.0.ffn_gate.weight", {H, I}, "F32");
  expect_tensor(t, "blk.0.ffn_up.weight", {H, I}, "F32");
  expect_tensor(t, "blk.1.ffn_down.weight", {I, H}, "F32");
  EXPECT_EQ(out["compared"].size(), t.size());
}

TEST(GgufExportTest, Qwen3TiedBf16CheckpointAsF16) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const std::string hf = tiny_model(dir, "qwen3", "bfloat16");
  const ModelConfig c = ModelConfig::from_file(hf + "/config.json");
  ASSERT_TRUE(c.tie_word_embeddings);
  ASSERT_NE(c.head_dim, c.hidden_size / c.num_attention_heads);
  export_gguf(hf, dir.file("qwen3.gguf"), {.outtype = GgufOutType::kF16, .name = "Tiny Qwen3"});

  const json out = read_back(dir.file("qwen3.gguf"), hf);
  ASSERT_TRUE(out.is_object());
  expect_checks_pass(out);
  expect_model_metadata(out, c, "qwen3", 1, "Tiny Qwen3");
  expect_tokenizer_metadata(out, c);

  const auto t = tensors_of(out);
  const int64_t H = c.hidden_size, V = c.vocab_size, hd = c.head_dim;
  EXPECT_EQ(t.size(), 1 + 1 + 11 * static_cast<size_t>(c.num_hidden_layers));
  EXPECT_FALSE(t.count("output.weight"));
  EXPECT_FALSE(t.count("rope_freqs.weight"));
  expect_tensor(t, "token_embd.weight", {H, V}, "F16");
  expect_tensor(t, "blk.0.attn_q.weight", {H, c.num_attention_heads * hd}, "F16");
  expect_tensor(t, "blk.0.attn_q_norm.weight", {hd}, "F32");
  expect_tensor(t, "blk.0.attn_k_norm.weight", {hd}, "F32");
  expect_tensor(t, "blk.0.attn_norm.weight", {H}, "F32");
  expect_tensor(t, "output_norm.weight", {H}, "F32");
}

TEST(GgufExportTest, Qwen2ShardedBiasesStayF32) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const std::string hf = tiny_model(dir, "qwen2", "float16", 64 << 10);
  ASSERT_TRUE(fs::exists(hf + "/model.safetensors.index.json"));
  const ModelConfig c = ModelConfig::from_file(hf + "/config.json");
  export_gguf(hf, dir.file("qwen2.gguf"));  // default: F16

  const json out = read_back(dir.file("qwen2.gguf"), hf);
  ASSERT_TRUE(out.is_object());
  expect_checks_pass(out);
  expect_model_metadata(out, c, "qwen2", 1, "qwen2");
  const auto t = tensors_of(out);
  const int64_t kv = c.num_key_value_heads * c.head_dim;
  expect_tensor(t, "blk.0.attn_q.bias", {c.num_attention_heads * c.head_dim}, "F32");
  expect_tensor(t, "blk.0.attn_k.bias", {kv}, "F32");
  expect_tensor(t, "blk.0.attn_v.bias", {kv}, "F32");
  EXPECT_FALSE(t.count("blk.0.attn_output.bias"));
}

TEST(GgufExportTest, MistralIsLlamaWithLinearRopeKeys) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const std::string hf = tiny_model(dir, "mistral");
  set_rope_scaling(hf, {{"rope_type", "linear"}, {"factor", 2.5}});
  const ModelConfig c = ModelConfig::from_file(hf + "/config.json");
  export_gguf(hf, dir.file("mistral.gguf"), {.outtype = GgufOutType::kF16});

  const json out = read_back(dir.file("mistral.gguf"), hf);
  ASSERT_TRUE(out.is_object());
  expect_checks_pass(out);
  expect_model_metadata(out, c, "llama", 1, "mistral");
  const auto m = metadata_of(out);
  expect_string(m, "llama.rope.scaling.type", "linear");
  expect_f32(m, "llama.rope.scaling.factor", 2.5);
  EXPECT_FALSE(tensors_of(out).count("rope_freqs.weight"));
}

// A vocabulary larger than the SentencePiece model (embeddings padded, as some checkpoints do):
// ids past the model are "[PAD<id>]" unless tokenizer_config.json adds a token there.
TEST(GgufExportTest, PaddedVocabularyGetsAddedAndPadTokens) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const std::string hf = tiny_model(dir, "llama");
  const ModelConfig original = ModelConfig::from_file(hf + "/config.json");
  const int64_t spm_size = original.vocab_size;
  {
    const CheckpointReader reader = CheckpointReader::open_dir(hf);
    NamedTensors padded;
    for (const auto& name : reader.names()) {
      at::Tensor t = reader.tensor(name).clone();
      if (name == "model.embed_tokens.weight" || name == "lm_head.weight") {
        t = at::cat({t, at::full({2, t.size(1)}, 0.25, t.options())});
      }
      padded.emplace_back(name, t);
    }
    write_safetensors(hf + "/model.safetensors", padded);
  }
  json config = json::parse(testing::read_file(hf + "/config.json"));
  config["vocab_size"] = spm_size + 2;
  testing::write_file(hf + "/config.json", config.dump(2));
  json tokenizer_config = json::parse(testing::read_file(hf + "/tokenizer_config.json"));
  tokenizer_config["added_tokens_decoder"][std::to_string(spm_size)] = {{"content", "<|im_start|>"},
                                                                        {"special", true}};
  testing::write_file(hf + "/tokenizer_config.json", tokenizer_config.dump(2));

  export_gguf(hf, dir.file("padded.gguf"), {.outtype = GgufOutType::kF32});
  const json out = read_back(dir.file("padded.gguf"), hf);
  ASSERT_TRUE(out.is_object());
  expect_checks_pass(out);
  const auto m = metadata_of(out);
  const json& tokens = m.at("tokenizer.ggml.tokens").value;
  EXPECT_EQ(tokens["count"], spm_size + 2);
  EXPECT_EQ(tokens["tail"][2], "<|im_start|>");
  EXPECT_EQ(tokens["tail"][3], "[PAD" + std::to_string(spm_size + 1) + "]");
  EXPECT_EQ(m.at("tokenizer.ggml.token_type").value["tail"][2], 3);
  EXPECT_EQ(m.at("tokenizer.ggml.token_type").value["tail"][3], 5);
  EXPECT_EQ(m.at("tokenizer.ggml.scores").value["tail"][2], -1000.0);
  EXPECT_EQ(m.at("tokenizer.ggml.scores").value["tail"][3], -10000.0);
  expect_tensor(tensors_of(out), "token_embd.weight", {original.hidden_size, spm_size + 2}, "F32");
}

// The tiny models' tokenizer.json is the SentencePiece model as HF's converter writes it
// (Metaspace, not byte-level): no llama.cpp pre-tokenizer name fits it.
TEST(GgufExportTest, NonByteLevelTokenizerJsonIsUnsupportedUnlessSkipped) {
  ScratchDir dir;
  const std::string hf = tiny_model(dir, "qwen2");
  fs::remove(hf + "/tokenizer.model");
  EXPECT_EQ(error_kind_of([&] { export_gguf(hf, dir.file("a.gguf")); }), ErrorKind::kUnsupported);
  EXPECT_FALSE(fs::exists(dir.file("a.gguf")));

  export_gguf(hf, dir.file("b.gguf"), {.skip_tokenizer = true});
  const std::string bytes = testing::read_file(dir.file("b.gguf"));
  EXPECT_EQ(bytes.find("tokenizer."), std::string::npos);
  EXPECT_NE(bytes.find("qwen2.block_count"), std::string::npos);
}

// Quantized exports: read_gguf.py checks every tensor's type against llama-quantize's rules,
// dequantizes it with gguf-py within the type's error bound, and for block-32 types compares the
// bytes with gguf-py's quantize.
json export_and_read(const std::string& hf, const std::string& path, GgufOutType outtype) {
  export_gguf(hf, path, {.outtype = outtype});
  return read_back(path, hf);
}

TEST(GgufExportTest, QuantizedMicroModelsUseTheBlock32Fallbacks) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const std::string hf = tiny_model(dir, "llama");  // hidden 64: no K-quant fits
  const ModelConfig c = ModelConfig::from_file(hf + "/config.json");
  const std::map<GgufOutType, std::pair<int64_t, std::string>> cases = {
      {GgufOutType::kQ8_0, {7, "Q8_0"}},
      {GgufOutType::kQ4_0, {2, "Q4_0"}},
      {GgufOutType::kQ4_K_M, {15, "Q5_0"}}};
  for (const auto& [outtype, want] : cases) {
    SCOPED_TRACE(gguf_outtype_name(outtype));
    const json out = export_and_read(hf, dir.file("q.gguf"), outtype);
    ASSERT_TRUE(out.is_object());
    expect_checks_pass(out);
    expect_model_metadata(out, c, "llama", want.first, "llama", true);
    const auto t = tensors_of(out);
    expect_tensor(t, "blk.0.attn_q.weight", {c.hidden_size, c.hidden_size}, want.second);
    expect_tensor(t, "output.weight", {c.hidden_size, c.vocab_size}, "Q8_0");
    expect_tensor(t, "blk.0.attn_norm.weight", {c.hidden_size}, "F32");
  }
}

TEST(GgufExportTest, Q4KMOfAKQuantSizedQwen2) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  TinyModelOptions o;
  o.arch = "qwen2";  // tied: token_embd is the output, Q6_K
  o.preset = "micro";
  o.hidden_size = 256;
  o.intermediate_size = 512;
  o.num_hidden_layers = 9;  // use_more_bits(i, 9): i in {0, 3, 6, 7, 8}
  const std::string hf = dir.file("qwen2");
  write_tiny_model(o, hf);
  const ModelConfig c = ModelConfig::from_file(hf + "/config.json");
  const json out = export_and_read(hf, dir.file("q4km.gguf"), GgufOutType::kQ4_K_M);
  ASSERT_TRUE(out.is_object());
  expect_checks_pass(out);
  expect_model_metadata(out, c, "qwen2", 15, "qwen2", true);
  const auto t = tensors_of(out);
  expect_tensor(t, "token_embd.weight", {256, c.vocab_size}, "Q6_K");
  for (int i = 0; i < 9; ++i) {
    const bool more = i == 0 || i == 3 || i == 6 || i == 7 || i == 8;
    const std::string blk = "blk." + std::to_string(i) + ".";
    expect_tensor(t, blk + "attn_v.weight", {256, c.num_key_value_heads * c.head_dim},
                  more ? "Q6_K" : "Q4_K");
    expect_tensor(t, blk + "ffn_down.weight", {512, 256}, more ? "Q6_K" : "Q4_K");
    expect_tensor(t, blk + "ffn_up.weight", {256, 512}, "Q4_K");
    expect_tensor(t, blk + "attn_v.bias", {c.num_key_value_heads * c.head_dim}, "F32");
  }
}

// A byte-level BPE tokenizer.json (trained by bpe_reference.py like Llama 3's or Qwen2's) in
// place of the SentencePiece model; read_gguf.py checks tokens, types, merges and ids against it.
std::string bpe_model(const ScratchDir& dir, const std::string& kind, const std::string& arch) {
  std::string output;
  const int rc = testing::run_reference_script("bpe_reference.py",
                                               {"train", kind, dir.file("tok-" + kind)}, &output);
  EXPECT_EQ(rc, 0) << output;
  const std::string hf = tiny_model(dir, arch);
  const json tokenizer =
      json::parse(testing::read_file(dir.file("tok-" + kind + "/tokenizer.json")));
  int64_t vocab = 0;
  for (const auto& [token, id] : tokenizer["model"]["vocab"].items())
    vocab = std::max<int64_t>(vocab, id.get<int64_t>() + 1);
  for (const auto& a : tokenizer["added_tokens"])
    vocab = std::max<int64_t>(vocab, a["id"].get<int64_t>() + 1);
  vocab += 3;  // padding ids past the tokenizer
  {
    const CheckpointReader reader = CheckpointReader::open_dir(hf);
    NamedTensors tensors;
    for (const auto& name : reader.names()) {
      at::Tensor t = reader.tensor(name).clone();
      if (name == "model.embed_tokens.weight" || name == "lm_head.weight") {
        t = at::full({vocab, t.size(1)}, 0.01, t.options());
      }
      tensors.emplace_back(name, t);
    }
    write_safetensors(hf + "/model.safetensors", tensors);
  }
  json config = json::parse(testing::read_file(hf + "/config.json"));
  config["vocab_size"] = vocab;
  testing::write_file(hf + "/config.json", config.dump(2));
  fs::remove(hf + "/tokenizer.model");
  fs::remove(hf + "/special_tokens_map.json");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
    fs::copy_file(dir.file("tok-" + kind + "/" + f), hf + "/" + f,
                  fs::copy_options::overwrite_existing);
  }
  return hf;
}

// bpe_model exported and read back; its metadata when every check passed, else empty.
std::map<std::string, Entry> bpe_metadata(const ScratchDir& dir, const std::string& kind,
                                          const std::string& arch, GgufOutType outtype) {
  const std::string hf = bpe_model(dir, kind, arch);
  const json out = export_and_read(hf, dir.file("bpe.gguf"), outtype);
  if (!out.is_object()) return {};
  expect_checks_pass(out);
  return metadata_of(out);
}

TEST(GgufExportTest, BpeTokenizerMetadataLlama3) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const auto m = bpe_metadata(dir, "llama3", "llama", GgufOutType::kF32);
  ASSERT_FALSE(m.empty());
  expect_string(m, "tokenizer.ggml.model", "gpt2");
  expect_string(m, "tokenizer.ggml.pre", "llama-bpe");
  EXPECT_EQ(m.at("tokenizer.ggml.merges").type, "ARRAY[STRING]");
  EXPECT_FALSE(m.count("tokenizer.ggml.scores"));
  EXPECT_EQ(m.at("tokenizer.ggml.add_bos_token").value, true);  // the template adds BOS
  EXPECT_EQ(m.at("tokenizer.ggml.token_type").value["tail"][3], 5);
  EXPECT_EQ(m.at("tokenizer.ggml.token_type").value["tail"][0], 3);  // last special token
}

TEST(GgufExportTest, BpeTokenizerMetadataQwen2) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const auto m = bpe_metadata(dir, "qwen2", "qwen2", GgufOutType::kF16);
  ASSERT_FALSE(m.empty());
  expect_string(m, "tokenizer.ggml.pre", "qwen2");
  EXPECT_EQ(m.at("tokenizer.ggml.add_bos_token").value, false);
  // "<tool_call>", "</tool_call>", "caf\u00e9tok": non-special added tokens are user-defined.
  const json& types = m.at("tokenizer.ggml.token_type").value;
  EXPECT_EQ(types["tail"][0], 4);
}

TEST(GgufExportTest, UnknownPreTokenizerRegexIsUnsupported) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const std::string hf = bpe_model(dir, "qwen2", "qwen2");
  json tokenizer = json::parse(testing::read_file(hf + "/tokenizer.json"));
  tokenizer["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{L}+|\\s+";
  testing::write_file(hf + "/tokenizer.json", tokenizer.dump());
  try {
    export_gguf(hf, dir.file("x.gguf"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.file("x.gguf")));
}

TEST(GgufExportTest, MissingOrUnexpectedTensorsAreShapeErrors) {
  ScratchDir dir;
  const std::string hf = tiny_model(dir, "llama");
  const CheckpointReader reader = CheckpointReader::open_dir(hf);
  NamedTensors all;
  for (const auto& name : reader.names()) all.emplace_back(name, reader.tensor(name).clone());

  NamedTensors missing;
  for (const auto& [name, t] : all) {
    if (name != "model.layers.1.mlp.up_proj.weight") missing.emplace_back(name, t);
  }
  write_safetensors(hf + "/model.safetensors", missing);
  EXPECT_EQ(error_kind_of([&] { export_gguf(hf, dir.file("m.gguf")); }), ErrorKind::kShape);

  NamedTensors extra = all;
  extra.emplace_back("model.layers.0.self_attn.extra.weight", at::ones({2, 2}));
  write_safetensors(hf + "/model.safetensors", extra);
  EXPECT_EQ(error_kind_of([&] { export_gguf(hf, dir.file("m.gguf")); }), ErrorKind::kShape);
  EXPECT_FALSE(fs::exists(dir.file("m.gguf")));
}

}  // namespace
}  // namespace qtrain

// GgufReader: reads back every value and tensor GgufWriter wrote; agrees with PyPI's `gguf`
// package (tests/reference/gguf_listing.py) on our files and on llama.cpp's own vocab files;
// refuses every truncation of a valid file and hand-made hostile headers with the documented error
// kind and context.
#include "formats/gguf/gguf_reader.h"

#include "core/error.h"
#include "formats/gguf/gguf_types.h"
#include "formats/gguf/gguf_writer.h"
#include "tests/support/le_bytes.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>

namespace qtrain {
namespace {

using nlohmann::json;
using testing::Bytes;
using testing::ScratchDir;

at::Tensor wave(std::vector<int64_t> shape, double phase) {
  const int64_t n = c10::multiply_integers(shape);
  return (at::arange(n, at::kFloat) * 0.173 + phase).sin().reshape(shape);
}

// A file with every scalar type, arrays, a 64-byte alignment and F32/F16/Q8_0/Q4_K tensors.
GgufWriter sample_writer() {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("general.alignment", 64);
  w.add_u8("t.u8", 200);
  w.add_i8("t.i8", -100);
  w.add_u16("t.u16", 60000);
  w.add_i16("t.i16", -30000);
  w.add_i32("t.i32", -2000000000);
  w.add_f32("t.f32", 1e-5f);
  w.add_bool("t.bool", true);
  w.add_u64("t.u64", uint64_t{1} << 40);
  w.add_i64("t.i64", -(int64_t{1} << 40));
  w.add_f64("t.f64", 0.1);
  w.add_array("t.tokens", std::vector<std::string>{"<s>", "", "héllo", "\xe2\x96\x81x"});
  w.add_array("t.ids", std::vector<int32_t>{1, -2, 3});
  w.add_array("t.scores", std::vector<float>{0.5f, -1.25f});
  w.add_bool_array("t.flags", {true, false, true});
  w.add_tensor("a", wave({2, 3}, 0.1), GgmlType::kF32);
  w.add_tensor("b", wave({5}, 0.2), GgmlType::kF16);
  w.add_tensor("c", wave({2, 64}, 0.3), GgmlType::kQ8_0);
  w.add_tensor("d", wave({1, 256}, 0.4), GgmlType::kQ4_K);
  return w;
}

struct Sample {
  ScratchDir dir;
  std::string path = dir.file("sample.gguf");
  std::vector<uint64_t> offsets;
  Sample() {
    GgufWriter w = sample_writer();
    offsets = w.tensor_offsets();
    w.write(path);
  }
};

TEST(GgufReader, ReadsBackWhatTheWriterWrote) {
  Sample sample;
  const GgufReader r = GgufReader::open(sample.path);
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.alignment(), 64u);
  EXPECT_EQ(r.data_offset() % 64, 0u);
  ASSERT_EQ(r.metadata().size(), 16u);
  EXPECT_EQ(r.metadata()[0].first, "general.architecture");
  EXPECT_EQ(r.get_string("general.architecture"), "llama");
  EXPECT_EQ(r.find("t.u8")->u, 200u);
  EXPECT_EQ(r.find("t.i8")->i, -100);
  EXPECT_EQ(r.find("t.u16")->u, 60000u);
  EXPECT_EQ(r.find("t.i16")->i, -30000);
  EXPECT_EQ(r.find("t.i32")->i, -2000000000);
  EXPECT_EQ(r.get_f32("t.f32"), 1e-5f);
  EXPECT_EQ(r.find("t.bool")->u, 1u);
  EXPECT_EQ(r.find("t.u64")->u, uint64_t{1} << 40);
  EXPECT_EQ(r.find("t.i64")->i, -(int64_t{1} << 40));
  EXPECT_EQ(r.find("t.f64")->f, 0.1);
  const GgufValue& tokens = *r.find("t.tokens");
  EXPECT_EQ(gguf_value_type_name(tokens), "ARRAY[STRING]");
  ASSERT_EQ(tokens.items.size(), 4u);
  EXPECT_EQ(tokens.items[1].s, "");
  EXPECT_EQ(tokens.items[2].s, "héllo");
  EXPECT_EQ(r.find("t.ids")->items[1].i, -2);
  EXPECT_EQ(r.find("t.scores")->items[1].f, -1.25);
  EXPECT_EQ(r.find("t.flags")->items[1].u, 0u);
  EXPECT_EQ(r.find("missing"), nullptr);

  ASSERT_EQ(r.tensors().size(), 4u);
  const std::vector<std::vector<int64_t>> ne = {{3, 2}, {5}, {64, 2}, {256, 1}};
  const std::vector<GgmlType> types = {GgmlType::kF32, GgmlType::kF16, GgmlType::kQ8_0,
                                       GgmlType::kQ4_K};
  for (size_t k = 0; k < 4; ++k) {
    const GgufTensorInfo& t = r.tensors()[k];
    EXPECT_EQ(t.ne, ne[k]) << t.name;
    EXPECT_EQ(t.type, types[k]) << t.name;
    EXPECT_EQ(t.offset, sample.offsets[k]) << t.name;
    EXPECT_EQ(t.nbytes, ggml_nbytes(types[k], ne[k])) << t.name;
  }
  const GgufTensorInfo& last = r.tensors().back();
  EXPECT_EQ(r.file_size(), r.data_offset() + (last.offset + last.nbytes + 63) / 64 * 64);

  EXPECT_TRUE(at::equal(r.read_tensor("a"), wave({2, 3}, 0.1)));
  EXPECT_TRUE(at::equal(r.read_tensor("b"), wave({5}, 0.2).to(at::kHalf)));
  std::vector<uint8_t> q8(ggml_nbytes(GgmlType::kQ8_0, {64, 2}));
  ggml_encode_rows(GgmlType::kQ8_0, wave({2, 64}, 0.3), q8.data());
  EXPECT_EQ(r.read_bytes("c"), q8);
  try {
    r.read_tensor("c");
    ADD_FAILURE() << "Q8_0 read as values";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_EQ(e.context().tensor, "c");
  }
  EXPECT_THROW(r.read_bytes("nope"), Error);
}

// ---------------------------------------------------------------------------------------------
// Against PyPI's gguf package.

std::string python_type_name(const std::string& ours) {
  static const std::map<std::string, std::string> names = {
      {"U8", "UINT8"},      {"I8", "INT8"},    {"U16", "UINT16"},  {"I16", "INT16"},
      {"U32", "UINT32"},    {"I32", "INT32"},  {"F32", "FLOAT32"}, {"BOOL", "BOOL"},
      {"STRING", "STRING"}, {"U64", "UINT64"}, {"I64", "INT64"},   {"F64", "FLOAT64"}};
  if (ours.rfind("ARRAY[", 0) == 0) {
    return "ARRAY[" + python_type_name(ours.substr(6, ours.size() - 7)) + "]";
  }
  return names.at(ours);
}

json scalar_json(const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::kU8:
    case GgufValueType::kU16:
    case GgufValueType::kU32:
    case GgufValueType::kU64:
      return v.u;
    case GgufValueType::kI8:
    case GgufValueType::kI16:
    case GgufValueType::kI32:
    case GgufValueType::kI64:
      return v.i;
    case GgufValueType::kF32:
    case GgufValueType::kF64:
      return v.f;
    case GgufValueType::kBool:
      return v.u != 0;
    case GgufValueType::kString:
      return v.s;
    case GgufValueType::kArray:
      break;
  }
  ADD_FAILURE() << "nested array";
  return nullptr;
}

// The listing gguf_listing.py prints, from our reader.
json listing_of(const GgufReader& r) {
  json metadata = json::array();
  for (const auto& [key, v] : r.metadata()) {
    json value;
    if (v.type == GgufValueType::kArray) {
      json head = json::array(), tail = json::array();
      for (size_t k = 0; k < v.items.size() && k < 8; ++k) head.push_back(scalar_json(v.items[k]));
      for (size_t k = v.items.size() > 4 ? v.items.size() - 4 : 0; k < v.items.size(); ++k) {
        tail.push_back(scalar_json(v.items[k]));
      }
      value = {{"count", v.items.size()}, {"head", head}, {"tail", tail}};
    } else {
      value = scalar_json(v);
    }
    metadata.push_back(
        {{"key", key}, {"type", python_type_name(gguf_value_type_name(v))}, {"value", value}});
  }
  json tensors = json::array();
  for (const GgufTensorInfo& t : r.tensors()) {
    tensors.push_back({{"name", t.name},
                       {"ne", t.ne},
                       {"type", ggml_type_name(t.type)},
                       {"offset", t.offset},
                       {"n_bytes", t.nbytes}});
  }
  return {{"version", r.version()},
          {"tensor_count", r.tensors().size()},
          {"kv_count", r.metadata().size()},
          {"alignment", r.alignment()},
          {"data_offset", r.data_offset()},
          {"file_size", r.file_size()},
          {"metadata", metadata},
          {"tensors", tensors}};
}

void expect_same_listing_as_python(const std::string& path) {
  std::string output;
  ASSERT_EQ(testing::run_reference_script("gguf_listing.py", {path}, &output), 0) << output;
  const json python = json::parse(output);
  const json ours = listing_of(GgufReader::open(path));
  EXPECT_EQ(ours.size(), python.size());
  for (const auto& [field, value] : python.items()) {
    if (field == "metadata" || field == "tensors") continue;
    EXPECT_EQ(ours[field], value) << path << ": " << field;
  }
  for (const char* list : {"metadata", "tensors"}) {
    ASSERT_EQ(ours[list].size(), python[list].size()) << path << ": " << list;
    for (size_t k = 0; k < python[list].size(); ++k) {
      EXPECT_EQ(ours[list][k], python[list][k]) << path << ": " << list << " entry " << k;
    }
  }
}

TEST(GgufReader, AgreesWithPythonGgufOnOurFile) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  Sample sample;
  expect_same_listing_as_python(sample.path);
}

// gguf-py takes ~15 s over a vocabulary's 300k strings, so it checks one file; the other is read
// for its own invariants.
TEST(GgufReader, AgreesWithPythonGgufOnLlamaCppVocabFiles) {
  const char* dir = std::getenv("QTRAIN_LLAMA_CPP_VOCAB_DIR");
  if (!dir || !*dir) GTEST_SKIP() << "QTRAIN_LLAMA_CPP_VOCAB_DIR is not set";
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  expect_same_listing_as_python(std::string(dir) + "/ggml-vocab-qwen2.gguf");
  for (const char* file : {"ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf"}) {
    const GgufReader r = GgufReader::open(std::string(dir) + "/" + file);
    EXPECT_EQ(r.get_string("tokenizer.ggml.model"), "gpt2") << file;
    EXPECT_EQ(r.find("tokenizer.ggml.tokens")->items.size(),
              r.find("tokenizer.ggml.token_type")->items.size())
        << file;
    EXPECT_TRUE(r.tensors().empty()) << file;
  }
}

// ---------------------------------------------------------------------------------------------
// Bad files.

struct Refusal {
  ErrorKind kind;
  std::string message;
  ErrorContext context;
};

Refusal refusal_of(const std::string& path) {
  try {
    GgufReader::open(path);
  } catch (const Error& e) {
    return {e.kind(), e.message(), e.context()};
  }
  return {ErrorKind::kInternal, "accepted", {}};
}

// Every prefix that loses a byte of the header or of tensor data is refused; only the zero
// padding after the last tensor may be missing (ggml pads it, and nothing is lost without it).
TEST(GgufReader, EveryTruncationIsRefusedAsAFormatError) {
  Sample sample;
  const std::string whole = testing::read_file(sample.path);
  const GgufReader full = GgufReader::open(sample.path);
  const GgufTensorInfo& last = full.tensors().back();
  const uint64_t data_end = full.data_offset() + last.offset + last.nbytes;
  ASSERT_LT(data_end, whole.size());
  const std::string cut = sample.dir.file("cut.gguf");
  for (size_t n = 0; n < whole.size(); ++n) {
    testing::write_file(cut, whole.substr(0, n));
    const Refusal r = refusal_of(cut);
    if (n >= data_end) {
      EXPECT_EQ(r.kind, ErrorKind::kInternal) << n << " bytes: " << r.message;  // accepted
      continue;
    }
    ASSERT_EQ(r.kind, ErrorKind::kFormat) << n << " bytes: " << r.message;
    EXPECT_EQ(r.context.file, cut);
  }
}

// A header: magic, version, counts, then `body` (key-value pairs and tensor infos).
std::string gguf(uint64_t tensors, uint64_t kvs, const std::string& body, uint32_t version = 3) {
  Bytes b;
  b.raw("GGUF", 4).u32(version).u64(tensors).u64(kvs);
  return b.s + body;
}

std::string kv_u32(const std::string& key, uint32_t value) {
  return Bytes().str(key).u32(static_cast<uint32_t>(GgufValueType::kU32)).u32(value).s;
}

// A tensor info (ne in GGUF order).
std::string tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type,
                   uint64_t offset) {
  Bytes b;
  b.str(name).u32(static_cast<uint32_t>(ne.size()));
  for (uint64_t d : ne) b.u64(d);
  return b.u32(type).u64(offset).s;
}

// Header `h` padded to 32 bytes and followed by `data_bytes` of tensor data.
std::string with_data(const std::string& h, size_t data_bytes) {
  return h + std::string((32 - h.size() % 32) % 32 + data_bytes, '\0');
}

TEST(GgufReader, HostileHeadersAreRefusedWithTheirPlace) {
  const uint32_t f32 = 0, q8_0 = 8;
  const std::string array_u8 = Bytes().u32(static_cast<uint32_t>(GgufValueType::kArray)).u32(0).s;
  struct Case {
    std::string name;
    std::string bytes;
    ErrorKind kind;
    std::string message;
    std::string field = "";
    std::string tensor = "";
  };
  const std::vector<Case> cases = {
      {"not gguf", "GGML" + std::string(20, '\0'), ErrorKind::kFormat, "not a GGUF file"},
      {"version 1", gguf(0, 0, "", 1), ErrorKind::kUnsupported, "version 1"},
      {"big-endian", gguf(0, 0, "", 3u << 24), ErrorKind::kUnsupported, "big-endian"},
      {"kv count", gguf(0, uint64_t{1} << 60, ""), ErrorKind::kFormat, "cannot fit"},
      {"tensor count", gguf(uint64_t{1} << 60, 0, ""), ErrorKind::kFormat, "cannot fit"},
      {"duplicate key", gguf(0, 2, kv_u32("k", 1) + kv_u32("k", 2)), ErrorKind::kFormat,
       "appears twice", "k"},
      {"value type", gguf(0, 1, Bytes().str("k").u32(13).u32(0).s), ErrorKind::kFormat,
       "unknown value type 13", "k"},
      {"string length", gguf(0, 1, Bytes().str("k").u32(8).u64(uint64_t{1} << 62).s),
       ErrorKind::kFormat, "claims", "k"},
      {"key length", gguf(0, 1, Bytes().u64(uint64_t{1} << 62).zeros(16).s), ErrorKind::kFormat,
       "claims"},
      {"array length", gguf(0, 1, Bytes().str("k").s + array_u8 + Bytes().u64(1000).s),
       ErrorKind::kFormat, "does not fit", "k"},
      {"array element type", gguf(0, 1, Bytes().str("k").u32(9).u32(77).u64(0).s),
       ErrorKind::kFormat, "unknown array element type 77", "k"},
      {"nested arrays",
       gguf(0, 1,
            [] {
              Bytes b;
              b.str("k").u32(9);
              for (int k = 0; k < 9; ++k) b.u32(9).u64(1);
              return b.u32(4).u64(0).s;
            }()),
       ErrorKind::kFormat, "nested deeper", "k"},
      {"alignment type", gguf(0, 1, Bytes().str("general.alignment").u32(10).u64(32).s),
       ErrorKind::kFormat, "must be a U32", "general.alignment"},
      {"alignment value", gguf(0, 1, kv_u32("general.alignment", 48)), ErrorKind::kFormat,
       "power of two", "general.alignment"},
      {"alignment zero", gguf(0, 1, kv_u32("general.alignment", 0)), ErrorKind::kFormat,
       "power of two", "general.alignment"},
      {"long name", with_data(gguf(1, 0, tensor(std::string(64, 'n'), {4}, f32, 0)), 16),
       ErrorKind::kFormat, "at most 63", "", std::string(64, 'n')},
      {"no dims", with_data(gguf(1, 0, tensor("t", {}, f32, 0)), 16), ErrorKind::kFormat, "0 dims",
       "", "t"},
      {"five dims", with_data(gguf(1, 0, tensor("t", {1, 1, 1, 1, 1}, f32, 0)), 16),
       ErrorKind::kFormat, "5 dims", "", "t"},
      {"negative dim", with_data(gguf(1, 0, tensor("t", {4, uint64_t{1} << 63}, f32, 0)), 16),
       ErrorKind::kFormat, "negative", "", "t"},
      {"element overflow",
       with_data(gguf(1, 0, tensor("t", {uint64_t{1} << 40, uint64_t{1} << 40}, f32, 0)), 16),
       ErrorKind::kFormat, "overflows", "", "t"},
      {"byte overflow", with_data(gguf(1, 0, tensor("t", {uint64_t{1} << 62}, f32, 0)), 16),
       ErrorKind::kFormat, "overflows", "", "t"},
      // fuzz_gguf finding: empty, yet LibTorch refused the shape with its own exception.
      {"zero dim among overflowing dims",
       with_data(gguf(1, 0, tensor("t", {291950, uint64_t{1} << 62, 0, 3}, f32, 0)), 16),
       ErrorKind::kFormat, "overflows", "", "t"},
      {"zero dim, size overflows",
       with_data(gguf(1, 0, tensor("t", {0, uint64_t{1} << 62}, f32, 0)), 16), ErrorKind::kFormat,
       "size overflows", "", "t"},
      {"unknown type", with_data(gguf(1, 0, tensor("t", {4}, 99, 0)), 16), ErrorKind::kUnsupported,
       "ggml type 99", "", "t"},
      {"partial block", with_data(gguf(1, 0, tensor("t", {33}, q8_0, 0)), 64), ErrorKind::kFormat,
       "not a multiple of Q8_0's block of 32", "", "t"},
      {"misaligned", with_data(gguf(1, 0, tensor("t", {4}, f32, 16)), 64), ErrorKind::kFormat,
       "not a multiple of the 32-byte alignment", "", "t"},
      {"past the end", with_data(gguf(1, 0, tensor("t", {8}, f32, 0)), 16), ErrorKind::kFormat,
       "runs past the end", "", "t"},
      {"offset past the end", with_data(gguf(1, 0, tensor("t", {4}, f32, uint64_t{1} << 63)), 16),
       ErrorKind::kFormat, "runs past the end", "", "t"},
      {"overlap", with_data(gguf(2, 0, tensor("a", {16}, f32, 0) + tensor("b", {4}, f32, 32)), 64),
       ErrorKind::kFormat, "overlaps that of a", "", "b"},
      {"duplicate tensor",
       with_data(gguf(2, 0, tensor("a", {4}, f32, 0) + tensor("a", {4}, f32, 32)), 64),
       ErrorKind::kFormat, "appears twice", "", "a"},
  };
  ScratchDir dir;
  for (const Case& c : cases) {
    const std::string path = dir.file("bad.gguf");
    testing::write_file(path, c.bytes);
    const Refusal r = refusal_of(path);
    EXPECT_EQ(r.kind, c.kind) << c.name << ": " << r.message;
    EXPECT_NE(r.message.find(c.message), std::string::npos) << c.name << ": " << r.message;
    EXPECT_EQ(r.context.file, path) << c.name;
    EXPECT_EQ(r.context.field, c.field) << c.name;
    EXPECT_EQ(r.context.tensor, c.tensor) << c.name;
  }
  // The same layouts made valid are accepted, so the cases above fail for their one defect.
  for (const std::string& good :
       {with_data(gguf(1, 0, tensor("t", {4}, f32, 0)), 16),
        with_data(gguf(1, 0, tensor("t", {32}, q8_0, 0)), 64),
        with_data(gguf(2, 0, tensor("a", {8}, f32, 0) + tensor("b", {4}, f32, 32)), 64),
        gguf(0, 1, kv_u32("general.alignment", 64))}) {
    const std::string path = dir.file("good.gguf");
    testing::write_file(path, good);
    EXPECT_NO_THROW(GgufReader::open(path));
  }
}

// fuzz_gguf finding: a tensor with a zero dim was copied from a null buffer (UBSan).
TEST(GgufReader, TensorsWithAZeroDimReadAsEmpty) {
  ScratchDir dir;
  const std::string path = dir.file("empty.gguf");
  testing::write_file(
      path, with_data(gguf(2, 0, tensor("e", {0, 3}, 0, 0) + tensor("f", {2}, 1, 0)), 32));
  const GgufReader r = GgufReader::open(path);
  EXPECT_EQ(r.read_tensor("e").sizes().vec(), (std::vector<int64_t>{3, 0}));
  EXPECT_TRUE(r.read_bytes("e").empty());
  EXPECT_EQ(r.read_tensor("f").numel(), 2);
}

// fuzz_gguf finding (a harness property, not the reader): with only empty tensors the file may
// end before the aligned start of the data section, as gguf-py and llama.cpp accept.
TEST(GgufReader, EmptyTensorsNeedNoDataSection) {
  ScratchDir dir;
  const std::string path = dir.file("short.gguf");
  const std::string header = gguf(1, 0, tensor("e", {0, 3}, 0, 0));
  ASSERT_NE(header.size() % 32, 0u);
  testing::write_file(path, header);
  const GgufReader r = GgufReader::open(path);
  EXPECT_GT(r.data_offset(), header.size());
  EXPECT_TRUE(r.read_bytes("e").empty());
  EXPECT_EQ(r.read_tensor("e").numel(), 0);
  // A tensor with data still needs it inside the file.
  testing::write_file(path, gguf(1, 0, tensor("f", {2}, 0, 0)));
  EXPECT_THROW(GgufReader::open(path), Error);
}

TEST(GgufReader, MissingFilesAndDirectoriesAreIoErrors) {
  ScratchDir dir;
  EXPECT_EQ(refusal_of(dir.file("none.gguf")).kind, ErrorKind::kIo);
  EXPECT_EQ(refusal_of(dir.path()).kind, ErrorKind::kIo);
}

}  // namespace
}  // namespace qtrain

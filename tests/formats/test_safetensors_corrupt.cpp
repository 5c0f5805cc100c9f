// The reader against malformed files: every case must give a qtrain::Error naming the file (and
// the tensor where there is one), never a crash or another exception.
#include "formats/safetensors/safetensors.h"

#include "core/error.h"
#include "tests/formats/safetensors_test_util.h"
#include "tests/support/sanitizer.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/types.h>
#include <unistd.h>

#include <map>
#include <random>

namespace qtrain {
namespace {
using testing::capture_error;
using testing::raw_safetensors;
using testing::ScratchDir;

std::string u64(uint64_t n) {
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out;
}

// One U8 entry.
std::string u8(const std::string& name, const std::string& shape, uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"U8\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

struct Corrupt {
  std::string label;
  std::string bytes;
  std::string tensor;  // expected in what(), "" when no tensor applies
  ErrorKind kind = ErrorKind::kFormat;
};

std::ostream& operator<<(std::ostream& out, const Corrupt& c) {
  return out << c.label;
}

Corrupt header_case(std::string label, const std::string& header, const std::string& data,
                    std::string tensor = "", ErrorKind kind = ErrorKind::kFormat) {
  return {std::move(label), raw_safetensors(header, data), std::move(tensor), kind};
}

std::vector<Corrupt> corrupt_cases() {
  const std::string entry = u8("a", "[4]", 0, 4);
  std::vector<Corrupt> cases = {
      // Header length and bounds.
      {"EmptyFile", "", ""},
      {"SevenBytes", std::string("\x02\0\0\0\0\0\0", 7), ""},
      {"ZeroLengthHeader", u64(0), ""},
      {"HeaderPastEnd", u64(64) + "{}", ""},
      {"HeaderLengthMaxU64", u64(~0ULL) + "{}", ""},
      {"HeaderLengthOneShort", u64(3) + "{}", ""},
      // Header text.
      header_case("LeadingSpace", " {}", ""),
      header_case("JsonArray", "[]", ""),
      header_case("JsonString", "\"{}\"", ""),
      header_case("Truncated", "{\"a\":{\"dtype\":\"U8\"", ""),
      header_case("MissingValue", "{\"a\":}", ""),
      header_case("TrailingGarbage", "{}x", ""),
      header_case("TwoObjects", "{}{}", ""),
      header_case("NulPadding", std::string("{}\0\0\0\0\0\0", 8), ""),
      header_case("NulThenGarbage", std::string("{}\0garbage", 10), ""),
      header_case("ByteOrderMark", "\xEF\xBB\xBF{}", ""),
      header_case("InvalidUtf8Key",
                  "{\"\xff\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", ""),
      header_case("OverlongUtf8", "{\"__metadata__\":{\"k\":\"\xC0\xAF\"}}", ""),
      header_case("Utf16Surrogate", "{\"__metadata__\":{\"k\":\"\xED\xA0\x80\"}}", ""),
      header_case("DeepNesting",
                  "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}", ""),
      // Entries.
      header_case("EntryNumber", "{\"a\":5}", "", "a"),
      header_case("EntryArray", "{\"a\":[1,2]}", "", "a"),
      header_case("EntryNull", "{\"a\":null}", "", "a"),
      header_case("MissingDtype", "{\"a\":{\"shape\":[4],\"data_offsets\":[0,4]}}", "abcd", "a"),
      header_case("MissingShape", "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,4]}}", "abcd", "a"),
      header_case("MissingOffsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4]}}", "abcd", "a"),
      header_case("DtypeNumber", "{\"a\":{\"dtype\":8,\"shape\":[4],\"data_offsets\":[0,4]}}",
                  "abcd", "a"),
      header_case("UnknownDtype",
                  "{\"a\":{\"dtype\":\"F12\",\"shape\":[4],\"data_offsets\":[0,4]}}", "abcd", "a"),
      header_case("LowercaseDtype",
                  "{\"a\":{\"dtype\":\"u8\",\"shape\":[4],\"data_offsets\":[0,4]}}", "abcd", "a"),
      header_case("UnsupportedDtypeF4",
                  "{\"a\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[0,1]}}", "a", "a",
                  ErrorKind::kUnsupported),
      header_case("ShapeNumber", "{" + u8("a", "4", 0, 4) + "}", "abcd", "a"),
      header_case("ShapeString", "{" + u8("a", "\"[4]\"", 0, 4) + "}", "abcd", "a"),
      header_case("DimString", "{" + u8("a", "[\"4\"]", 0, 4) + "}", "abcd", "a"),
      header_case("DimFloat", "{" + u8("a", "[4.0]", 0, 4) + "}", "abcd", "a"),
      header_case("DimBool", "{" + u8("a", "[true]", 0, 1) + "}", "a", "a"),
      header_case("DimNull", "{" + u8("a", "[null]", 0, 1) + "}", "a", "a"),
      header_case("NegativeDim", "{" + u8("a", "[-4]", 0, 4) + "}", "abcd", "a"),
      header_case("NegativeDims", "{" + u8("a", "[-2,-2]", 0, 4) + "}", "abcd", "a"),
      header_case("DimAboveInt64", "{" + u8("a", "[9223372036854775808]", 0, 4) + "}", "abcd", "a"),
      header_case("DimAboveUint64", "{" + u8("a", "[18446744073709551616]", 0, 4) + "}", "abcd",
                  "a"),
      header_case("NumelOverflow", "{" + u8("a", "[4294967296,4294967296,16]", 0, 0) + "}", "",
                  "a"),
      header_case("ZeroDimStrideOverflow",
                  "{" + u8("a", "[4611686018427387904,0,4611686018427387904]", 0, 0) + "}", "",
                  "a"),
      header_case("OffsetsNumber", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":4}}",
                  "abcd", "a"),
      header_case("OffsetsOne", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4]}}",
                  "abcd", "a"),
      header_case("OffsetsThree",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4,4]}}", "abcd", "a"),
      header_case("OffsetNegative",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[-4,0]}}", "abcd", "a"),
      header_case("OffsetFloat",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4.0]}}", "abcd", "a"),
      header_case("OffsetHuge",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,1e30]}}", "abcd",
                  "a"),
      header_case("OffsetString",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[\"0\",4]}}", "abcd",
                  "a"),
      header_case("BeginAfterEnd", "{" + u8("a", "[4]", 4, 0) + "}", "abcd", "a"),
      header_case("EndBeyondBuffer", "{" + u8("a", "[4]", 0, 4) + "}", "ab", "a"),
      header_case("EndMaxU64",
                  "{" + u8("a", "[4]", 18446744073709551612ULL, 18446744073709551615ULL) + "}",
                  "abcd", "a"),
      // A header that lies about shapes.
      header_case("ByteCountShort",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,12]}}",
                  std::string(12, 'x'), "a"),
      header_case("ByteCountLong",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}}",
                  std::string(12, 'x'), "a"),
      header_case("ScalarWithoutBytes",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,0]}}", "", "a"),
      header_case("ZeroSizeWithBytes", "{" + u8("a", "[0,4]", 0, 4) + "}", "abcd", "a"),
      // Tiling of the data buffer.
      header_case("Overlap", "{" + u8("a", "[8]", 0, 8) + "," + u8("b", "[8]", 4, 12) + "}",
                  std::string(12, 'x'), "b"),
      header_case("SameRange", "{" + u8("a", "[4]", 0, 4) + "," + u8("b", "[4]", 0, 4) + "}",
                  "abcd", "b"),
      header_case("Contained", "{" + u8("a", "[8]", 0, 8) + "," + u8("b", "[2]", 2, 4) + "}",
                  std::string(8, 'x'), "b"),
      header_case("Hole", "{" + u8("a", "[4]", 0, 4) + "," + u8("b", "[4]", 8, 12) + "}",
                  std::string(12, 'x'), "b"),
      header_case("FirstNotAtZero", "{" + u8("a", "[4]", 4, 8) + "}", std::string(8, 'x'), "a"),
      header_case("TrailingBytes", "{" + entry + "}", "abcdef", ""),
      header_case("TrailingBytesNoTensors", "{}", "xyz", ""),
      header_case("OnlyMetadataWithData", "{\"__metadata__\":{}}", "x", ""),
      // Duplicates (nlohmann alone would keep the last one silently).
      header_case("DuplicateTensor", "{" + entry + "," + entry + "}", "abcd", "a"),
      header_case("DuplicateEscapedKey", "{" + entry + "," + u8("\\u0061", "[4]", 0, 4) + "}",
                  "abcd", "a"),
      header_case(
          "DuplicateField",
          "{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
          "abcd", "dtype"),
      header_case("DuplicateMetadata", "{\"__metadata__\":{}, \"__metadata__\":{}}", "",
                  "__metadata__"),
      header_case("DuplicateMetadataKey", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", "", "k"),
      // __metadata__.
      header_case("MetadataNumberValue", "{\"__metadata__\":{\"k\":1}}", "", "k"),
      header_case("MetadataNullValue", "{\"__metadata__\":{\"k\":null}}", "", "k"),
      header_case("MetadataObjectValue", "{\"__metadata__\":{\"k\":{}}}", "", "k"),
      header_case("MetadataArray", "{\"__metadata__\":[\"a\"]}", "", "__metadata__"),
      header_case("MetadataString", "{\"__metadata__\":\"pt\"}", "", "__metadata__"),
  };
  return cases;
}

// What each case must be rejected for, so that an earlier check cannot pass a test by accident.
std::string expected_reason(const std::string& label) {
  static const std::map<std::string, std::string> kReasons = {
      {"EmptyFile", "too short"},
      {"SevenBytes", "too short"},
      {"ZeroLengthHeader", "does not start with '{'"},
      {"HeaderPastEnd", "runs past the end"},
      {"HeaderLengthMaxU64", "exceeds the limit"},
      {"HeaderLengthOneShort", "runs past the end"},
      {"LeadingSpace", "does not start with '{'"},
      {"JsonArray", "does not start with '{'"},
      {"JsonString", "does not start with '{'"},
      {"Truncated", "invalid JSON"},
      {"MissingValue", "invalid JSON"},
      {"TrailingGarbage", "invalid JSON"},
      {"TwoObjects", "invalid JSON"},
      {"NulPadding", "NUL byte"},
      {"NulThenGarbage", "NUL byte"},
      {"ByteOrderMark", "does not start with '{'"},
      {"InvalidUtf8Key", "ill-formed UTF-8"},
      {"OverlongUtf8", "ill-formed UTF-8"},
      {"Utf16Surrogate", "ill-formed UTF-8"},
      {"DeepNesting", "nested deeper"},
      {"EntryNumber", "must be an object"},
      {"EntryArray", "must be an object"},
      {"EntryNull", "must be an object"},
      {"MissingDtype", "field 'dtype': required field is missing"},
      {"MissingShape", "field 'shape': required field is missing"},
      {"MissingOffsets", "field 'data_offsets': required field is missing"},
      {"DtypeNumber", "dtype must be a string"},
      {"UnknownDtype", "unknown safetensors dtype 'F12'"},
      {"LowercaseDtype", "unknown safetensors dtype 'u8'"},
      {"UnsupportedDtypeF4", "F4 is not supported"},
      {"ShapeNumber", "shape must be an array"},
      {"ShapeString", "shape must be an array"},
      {"DimString", "dimension must be an integer"},
      {"DimFloat", "dimension must be an integer"},
      {"DimBool", "dimension must be an integer"},
      {"DimNull", "dimension must be an integer"},
      {"NegativeDim", "dimension is negative"},
      {"NegativeDims", "dimension is negative"},
      {"DimAboveInt64", "is too large"},
      {"DimAboveUint64", "dimension must be an integer"},
      {"NumelOverflow", "is too large"},
      {"ZeroDimStrideOverflow", "is too large"},
      {"OffsetsNumber", "must be an array [begin, end]"},
      {"OffsetsOne", "must be an array [begin, end]"},
      {"OffsetsThree", "must be an array [begin, end]"},
      {"OffsetNegative", "begin is negative"},
      {"OffsetFloat", "end must be an integer"},
      {"OffsetHuge", "end must be an integer"},
      {"OffsetString", "begin must be an integer"},
      {"BeginAfterEnd", "begin 4 is after end 0"},
      {"EndBeyondBuffer", "beyond the 2-byte data buffer"},
      {"EndMaxU64", "span 3 bytes but U8 shape [4] needs 4"},
      {"ByteCountShort", "span 12 bytes but F32 shape [4] needs 16"},
      {"ByteCountLong", "span 12 bytes but F32 shape [2] needs 8"},
      {"ScalarWithoutBytes", "span 0 bytes but F32 shape [] needs 4"},
      {"ZeroSizeWithBytes", "span 4 bytes but U8 shape [0,4] needs 0"},
      {"Overlap", "overlap tensor 'a'"},
      {"SameRange", "overlap tensor 'a'"},
      {"Contained", "overlap tensor 'a'"},
      {"Hole", "bytes [4, 8) belong to no tensor"},
      {"FirstNotAtZero", "bytes [0, 4) belong to no tensor"},
      {"TrailingBytes", "trailing bytes"},
      {"TrailingBytesNoTensors", "trailing bytes"},
      {"OnlyMetadataWithData", "trailing bytes"},
      {"DuplicateTensor", "duplicate JSON key 'a'"},
      {"DuplicateEscapedKey", "duplicate JSON key 'a'"},
      {"DuplicateField", "duplicate JSON key 'dtype'"},
      {"DuplicateMetadata", "duplicate JSON key '__metadata__'"},
      {"DuplicateMetadataKey", "duplicate JSON key 'k'"},
      {"MetadataNumberValue", "metadata values must be strings"},
      {"MetadataNullValue", "metadata values must be strings"},
      {"MetadataObjectValue", "metadata values must be strings"},
      {"MetadataArray", "__metadata__ must be an object"},
      {"MetadataString", "__metadata__ must be an object"},
  };
  auto it = kReasons.find(label);
  return it == kReasons.end() ? "(no reason listed for " + label + ")" : it->second;
}

class CorruptSafetensors : public ::testing::TestWithParam<Corrupt> {};

TEST_P(CorruptSafetensors, IsRejectedWithContext) {
  const Corrupt& c = GetParam();
  ScratchDir dir;
  const std::string path = dir.file(c.label + ".safetensors");
  testing::write_file(path, c.bytes);
  try {
    SafetensorsFile::open(path);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), c.kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(expected_reason(c.label)), std::string::npos) << e.what();
    EXPECT_EQ(e.context().file, path) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    if (!c.tensor.empty()) {
      EXPECT_NE(std::string(e.what()).find(c.tensor), std::string::npos) << e.what();
    }
  }
  // The checkpoint reader reports the same.
  EXPECT_EQ(capture_error([&] { CheckpointReader::open_file(path); }).kind(), c.kind);
}

INSTANTIATE_TEST_SUITE_P(Cases, CorruptSafetensors, ::testing::ValuesIn(corrupt_cases()),
                         [](const auto& info) { return info.param.label; });

TEST(SafetensorsReader, HeaderOverLimitIsRejectedBeforeReading) {
  ScratchDir dir;
  const std::string path = dir.file("huge.safetensors");
  // A sparse file large enough that only the 100 MB limit, not the file size, rejects it.
  testing::write_file(path, u64(100'000'001) + "{");
  ASSERT_EQ(::truncate(path.c_str(), 100'000'100), 0);
  Error e = capture_error([&] { SafetensorsFile::open(path); });
  EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  EXPECT_NE(std::string(e.what()).find("limit"), std::string::npos) << e.what();
}

struct Valid {
  std::string label;
  std::string bytes;
  std::vector<std::string> names;  // in data-offset order
  std::map<std::string, std::string> metadata;
};

TEST(SafetensorsReader, AcceptsEdgeCasesTheReferenceAccepts) {
  const std::string a = u8("a", "[4]", 0, 4);
  const std::vector<Valid> cases = {
      {"EmptyObject", raw_safetensors("{}"), {}, {}},
      {"SpacePadded", raw_safetensors("{}      "), {}, {}},
      {"OtherTrailingWhitespace", raw_safetensors("{" + a + "}\n\t\r ", "abcd"), {"a"}, {}},
      {"OnlyMetadata", raw_safetensors("{\"__metadata__\":{\"k\":\"v\"}}"), {}, {{"k", "v"}}},
      {"NullMetadata", raw_safetensors("{\"__metadata__\":null," + a + "}", "abcd"), {"a"}, {}},
      {"MetadataLast",
       raw_safetensors("{" + a + ",\"__metadata__\":{\"k\":\"v\"}}", "abcd"),
       {"a"},
       {{"k", "v"}}},
      {"UnknownEntryFieldIgnored",
       raw_safetensors("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4],\"x\":[1]}}",
                       "abcd"),
       {"a"},
       {}},
      {"ZeroSizeAndScalars",
       raw_safetensors("{" + u8("z2", "[0]", 1, 1) + "," + u8("s", "[]", 0, 1) + "," +
                           u8("z1", "[3,0]", 1, 1) + "," + u8("z0", "[0]", 0, 0) + "}",
                       "s"),
       {"z0", "s", "z1", "z2"},
       {}},
      {"OutOfOrderEntries",
       raw_safetensors("{" + u8("b", "[2]", 2, 4) + "," + u8("a", "[2]", 0, 2) + "}", "abcd"),
       {"a", "b"},
       {}},
      {"UnicodeName",
       raw_safetensors("{" + u8("w\u00e9ight \\u2713", "[4]", 0, 4) + "}", "abcd"),
       {"w\u00e9ight \u2713"},
       {}},
  };
  ScratchDir dir;
  for (const Valid& c : cases) {
    SCOPED_TRACE(c.label);
    const std::string path = dir.file(c.label + ".safetensors");
    testing::write_file(path, c.bytes);
    std::shared_ptr<SafetensorsFile> file;
    try {
      file = SafetensorsFile::open(path);
    } catch (const Error& e) {
      ADD_FAILURE() << e.what();
      continue;
    }
    EXPECT_EQ(file->names(), c.names);
    EXPECT_EQ(file->metadata(), c.metadata);
    for (const std::string& name : file->names()) {
      at::Tensor t = file->tensor(name);
      EXPECT_EQ(t.sizes().vec(), file->info(name).shape);
    }
  }
}

TEST(SafetensorsReader, MisalignedDataIsCopiedAligned) {
  ScratchDir dir;
  // Data at a file offset of 7 mod 8: misaligned for every multi-byte dtype.
  std::string header = "{\"a\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[0,24]}}";
  while ((8 + header.size()) % 8 != 7) header += ' ';
  std::vector<double> values = {1.5, -2.25, 1e300};
  std::string data(reinterpret_cast<const char*>(values.data()), 24);
  testing::write_file(dir.file("m.safetensors"), raw_safetensors(header, data));
  auto file = SafetensorsFile::open(dir.file("m.safetensors"));
  at::Tensor t = file->tensor("a");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % alignof(double), 0u);
  EXPECT_TRUE(at::equal(t, at::tensor(values, at::kDouble)));
}

// Mutated and truncated copies of a valid file: each opens or throws qtrain::Error, nothing else;
// whatever opens can be read in full.
TEST(SafetensorsReader, MutationsNeverCrash) {
  ScratchDir dir;
  const std::string good = dir.file("good.safetensors");
  write_safetensors(good,
                    {{"a", at::arange(6, at::kFloat).reshape({2, 3})},
                     {"b", at::ones({0, 2}, at::kByte)},
                     {"c", at::scalar_tensor(7, at::kLong)}},
                    {{"format", "pt"}, {"k", "v"}});
  const std::string original = testing::read_file(good);
  const std::string path = dir.file("mutant.safetensors");
  int opened = 0, rejected = 0;
  auto attempt = [&](const std::string& bytes) {
    testing::write_file(path, bytes);
    try {
      auto file = SafetensorsFile::open(path);
      for (const std::string& name : file->names()) file->tensor(name).sum();
      ++opened;
    } catch (const Error&) {
      ++rejected;
    }
  };
  for (size_t n = 0; n < original.size(); ++n) attempt(original.substr(0, n));
  std::mt19937 rng(1234);
  const char interesting[] = {'\0', '\xff', '{', '}', '[', ']', '"', ',', ':', '-', '0', '9', ' '};
  for (int round = 0; round < 1000; ++round) {
    std::string bytes = original;
    int edits = 1 + rng() % 3;
    for (int i = 0; i < edits; ++i) {
      size_t at = rng() % bytes.size();
      bytes[at] = rng() % 2 ? interesting[rng() % sizeof(interesting)] : static_cast<char>(rng());
    }
    attempt(bytes);
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(opened, 0);  // mutations of the data bytes stay valid
}

// Each entry is checked as soon as it has parsed (the header's JSON is never held whole), yet the
// error is the one a check of the whole parsed header in name order gives: a syntax, nesting or
// duplicate-key error anywhere first, then the bad entry whose name sorts first.
TEST(SafetensorsReader, ErrorsComeInTheOrderOfTheWholeHeader) {
  const std::string bad_dtype = "\"b\":{\"dtype\":\"F12\",\"shape\":[4],\"data_offsets\":[0,4]}";
  const std::string bad_shape = "\"a\":{\"dtype\":\"U8\",\"shape\":4,\"data_offsets\":[0,4]}";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{" + bad_dtype + ",\"c\":[}", "invalid JSON"},
      {"{" + bad_dtype + "," + u8("c", "[0]", 0, 0) + "," + u8("c", "[0]", 0, 0) + "}",
       "duplicate JSON key 'c'"},
      {"{" + bad_dtype + ",\"c\":{\"x\":[[[[[[[[1]]]]]]]]}}", "nested deeper than 8 levels"},
      {"{" + bad_dtype + "," + bad_shape + "}",
       "tensor 'a': field 'shape': shape must be an array"},
      {"{" + bad_dtype + "," + u8("a", "[8]", 0, 8) + "}",
       "tensor 'a': data_offsets end 8 lies beyond the 4-byte data buffer"},
      {"{\"__metadata__\":{\"k\":1}," + bad_dtype + "}", "metadata values must be strings"},
      {"{" + bad_dtype + ",\"__metadata__\":{\"k\":1}}", "metadata values must be strings"},
  };
  ScratchDir dir;
  for (const auto& [header, reason] : cases) {
    SCOPED_TRACE(header);
    const std::string path = dir.file("order.safetensors");
    testing::write_file(path, raw_safetensors(header, "abcd"));
    const Error e = capture_error([&] { SafetensorsFile::open(path); });
    EXPECT_NE(std::string(e.what()).find(reason), std::string::npos) << e.what();
  }
}

// nlohmann's parser callback rescanned the root object each time an entry closed, so 100k tensors
// took minutes; counted here, timed in tools/bench/bench_safetensors.cpp.
TEST(SafetensorsReader, OpensAHeaderOfAMillionZeroSizeTensors) {
  constexpr int64_t kTensors = QTRAIN_ASAN ? 200'000 : 1'000'000;
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  header.reserve(kTensors * 56);
  for (int64_t i = 0; i < kTensors; ++i) header += "," + u8("t" + std::to_string(i), "[0]", 0, 0);
  header += "}";
  ScratchDir dir;
  const std::string path = dir.file("many.safetensors");
  testing::write_file(path, raw_safetensors(header));
  header = std::string();

  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->names().size(), static_cast<size_t>(kTensors));
  EXPECT_EQ(file->metadata().at("format"), "pt");
  const std::string last = "t" + std::to_string(kTensors - 1);
  EXPECT_EQ(file->info(last).shape, std::vector<int64_t>{0});
  EXPECT_EQ(file->tensor(last).numel(), 0);
}

}  // namespace
}  // namespace qtrain

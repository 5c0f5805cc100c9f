#include "formats/gguf/gguf_reader.h"

#include "core/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <unordered_set>

namespace qtrain {
namespace {

// Arrays nest (an array of arrays); deeper than this is refused rather than recursed into.
constexpr int kMaxArrayDepth = 8;
// Elements of one array held in memory (a vocabulary has ~150k); more is refused.
constexpr uint64_t kMaxArrayElems = uint64_t{1} << 26;

const char* scalar_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8:
      return "U8";
    case GgufValueType::kI8:
      return "I8";
    case GgufValueType::kU16:
      return "U16";
    case GgufValueType::kI16:
      return "I16";
    case GgufValueType::kU32:
      return "U32";
    case GgufValueType::kI32:
      return "I32";
    case GgufValueType::kF32:
      return "F32";
    case GgufValueType::kBool:
      return "BOOL";
    case GgufValueType::kString:
      return "STRING";
    case GgufValueType::kArray:
      return "ARRAY";
    case GgufValueType::kU64:
      return "U64";
    case GgufValueType::kI64:
      return "I64";
    case GgufValueType::kF64:
      return "F64";
  }
  return "?";
}

bool is_value_type(uint32_t id) {
  return id <= static_cast<uint32_t>(GgufValueType::kF64);
}

// The fewest bytes one value of `type` takes in the file: bounds element counts before reading.
uint64_t min_encoded_bytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16:
      return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32:
      return 4;
    case GgufValueType::kString:
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64:
      return 8;
    case GgufValueType::kArray:
      return 12;
  }
  return 1;
}

// Sequential little-endian reads with every length checked against the bytes left in the file.
class Cursor {
 public:
  Cursor(const std::string& path, uint64_t size)
      : path_(path), size_(size), in_(path, std::ios::binary) {
    if (!in_) throw_error(ErrorKind::kIo, "cannot open for reading", {.file = path});
  }

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& what, ErrorContext context = {}) const {
    fail(ErrorKind::kFormat, what, std::move(context));
  }
  [[noreturn]] void fail(ErrorKind kind, const std::string& what, ErrorContext context) const {
    context.file = path_;
    throw_error(kind, what + " at byte " + std::to_string(pos_), context);
  }

  void read(void* out, uint64_t n, const char* what, const ErrorContext& context = {}) {
    if (n > left()) {
      fail(std::string("truncated: ") + what + " needs " + std::to_string(n) +
               " bytes but the file ends after " + std::to_string(left()),
           context);
    }
    in_.read(static_cast<char*>(out), static_cast<std::streamsize>(n));
    if (!in_) throw_error(ErrorKind::kIo, "short read", {.file = path_});
    pos_ += n;
  }

  template <typename T>
  T get(const char* what, const ErrorContext& context = {}) {
    T value;
    read(&value, sizeof(T), what, context);
    return value;
  }

  std::string string(const char* what, const ErrorContext& context = {}) {
    const auto length = get<uint64_t>(what, context);
    if (length > left()) {
      fail(std::string(what) + " claims " + std::to_string(length) +
               " bytes but the file ends after " + std::to_string(left()),
           context);
    }
    std::string s(static_cast<size_t>(length), '\0');
    read(s.data(), length, what, context);
    return s;
  }

 private:
  std::string path_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::ifstream in_;
};

GgufValue read_value(Cursor& in, GgufValueType type, const ErrorContext& where, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufValueType::kU8:
      v.u = in.get<uint8_t>("a U8", where);
      break;
    case GgufValueType::kI8:
      v.i = in.get<int8_t>("an I8", where);
      break;
    case GgufValueType::kU16:
      v.u = in.get<uint16_t>("a U16", where);
      break;
    case GgufValueType::kI16:
      v.i = in.get<int16_t>("an I16", where);
      break;
    case GgufValueType::kU32:
      v.u = in.get<uint32_t>("a U32", where);
      break;
    case GgufValueType::kI32:
      v.i = in.get<int32_t>("an I32", where);
      break;
    case GgufValueType::kF32:
      v.f = in.get<float>("an F32", where);
      break;
    case GgufValueType::kBool:
      v.u = in.get<uint8_t>("a BOOL", where) != 0;
      break;
    case GgufValueType::kString:
      v.s = in.string("a string value", where);
      break;
    case GgufValueType::kU64:
      v.u = in.get<uint64_t>("a U64", where);
      break;
    case GgufValueType::kI64:
      v.i = in.get<int64_t>("an I64", where);
      break;
    case GgufValueType::kF64:
      v.f = in.get<double>("an F64", where);
      break;
    case GgufValueType::kArray: {
      if (depth >= kMaxArrayDepth) {
        in.fail("arrays nested deeper than " + std::to_string(kMaxArrayDepth), where);
      }
      const auto elem = in.get<uint32_t>("an array's element type", where);
      if (!is_value_type(elem))
        in.fail("unknown array element type " + std::to_string(elem), where);
      v.elem_type = static_cast<GgufValueType>(elem);
      const auto count = in.get<uint64_t>("an array's length", where);
      if (count > in.left() / min_encoded_bytes(v.elem_type)) {
        in.fail("an array of " + std::to_string(count) + " " + scalar_type_name(v.elem_type) +
                    " values does not fit in the " + std::to_string(in.left()) + " bytes left",
                where);
      }
      if (count > kMaxArrayElems) {
        in.fail(ErrorKind::kUnsupported,
                "an array of " + std::to_string(count) + " values is larger than qtrain reads",
                where);
      }
      v.items.reserve(static_cast<size_t>(count));
      for (uint64_t k = 0; k < count; ++k) {
        v.items.push_back(read_value(in, v.elem_type, where, depth + 1));
      }
      break;
    }
  }
  return v;
}

uint64_t checked_mul(uint64_t a, uint64_t b, Cursor& in, const ErrorContext& where) {
  uint64_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) in.fail("the tensor's size overflows", where);
  return out;
}

GgufTensorInfo read_tensor_info(Cursor& in) {
  GgufTensorInfo t;
  t.name = in.string("a tensor name");
  const ErrorContext where{.tensor = t.name};
  if (t.name.size() > kGgufMaxNameBytes) {
    in.fail("tensor name is " + std::to_string(t.name.size()) + " bytes; GGUF allows at most " +
                std::to_string(kGgufMaxNameBytes),
            where);
  }
  const auto n_dims = in.get<uint32_t>("the tensor's dim count", where);
  if (n_dims == 0 || n_dims > kGgufMaxDims) {
    in.fail("tensor has " + std::to_string(n_dims) + " dims; GGUF allows 1 to " +
                std::to_string(kGgufMaxDims),
            where);
  }
  constexpr auto kMaxSize = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  // `span` multiplies the dims with zeros counted as 1: a zero dim makes the tensor empty, but
  // LibTorch still multiplies every dim and refuses a shape whose others overflow (fuzz_gguf).
  uint64_t elems = 1;
  uint64_t span = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const auto ne = in.get<uint64_t>("a tensor dim", where);
    if (ne > kMaxSize) in.fail("tensor dim " + std::to_string(d) + " is negative", where);
    elems = checked_mul(elems, ne, in, where);
    span = checked_mul(span, std::max<uint64_t>(ne, 1), in, where);
    if (span > kMaxSize) in.fail("the tensor's element count overflows", where);
    t.ne.push_back(static_cast<int64_t>(ne));
  }
  const auto type_id = in.get<uint32_t>("the tensor's type", where);
  t.type = static_cast<GgmlType>(type_id);
  const GgmlTypeTraits* traits = nullptr;
  try {
    traits = &ggml_type_traits(t.type);
  } catch (const Error&) {
    in.fail(ErrorKind::kUnsupported,
            "ggml type " + std::to_string(type_id) + " is not one qtrain reads", where);
  }
  if (t.ne[0] % traits->block_elems != 0) {
    in.fail("ne[0] = " + std::to_string(t.ne[0]) + " is not a multiple of " + traits->name +
                "'s block of " + std::to_string(traits->block_elems),
            where);
  }
  const auto block_elems = static_cast<uint64_t>(traits->block_elems);
  const auto block_bytes = static_cast<uint64_t>(traits->block_bytes);
  t.nbytes = checked_mul(elems / block_elems, block_bytes, in, where);
  if (checked_mul((span + block_elems - 1) / block_elems, block_bytes, in, where) > kMaxSize) {
    in.fail("the tensor's size overflows", where);
  }
  t.offset = in.get<uint64_t>("the tensor's offset", where);
  return t;
}

uint32_t alignment_of(const std::vector<std::pair<std::string, GgufValue>>& metadata, Cursor& in) {
  for (const auto& [key, value] : metadata) {
    if (key != "general.alignment") continue;
    const ErrorContext where{.field = key};
    if (value.type != GgufValueType::kU32) {
      in.fail("general.alignment must be a U32, not " + gguf_value_type_name(value), where);
    }
    if (value.u == 0 || (value.u & (value.u - 1)) != 0) {
      in.fail("general.alignment = " + std::to_string(value.u) + " is not a power of two", where);
    }
    return static_cast<uint32_t>(value.u);
  }
  return kGgufDefaultAlignment;
}

}  // namespace

std::string gguf_value_type_name(const GgufValue& value) {
  if (value.type != GgufValueType::kArray) return scalar_type_name(value.type);
  return std::string("ARRAY[") + scalar_type_name(value.elem_type) + "]";
}

GgufReader GgufReader::open(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw_error(ErrorKind::kIo, "is a directory, not a GGUF file", {.file = path});
  }
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw_error(ErrorKind::kIo, "cannot read: " + ec.message(), {.file = path});

  GgufReader r;
  r.path_ = path;
  r.file_size_ = size;
  Cursor in(path, size);
  const auto magic = in.get<uint32_t>("the magic");
  if (magic != kGgufMagic) in.fail("not a GGUF file (the first 4 bytes are not \"GGUF\")");
  r.version_ = in.get<uint32_t>("the version");
  if ((r.version_ & 0xFFFF) == 0 && r.version_ != 0) {
    throw_error(ErrorKind::kUnsupported, "a big-endian GGUF file; qtrain reads little-endian ones",
                {.file = path});
  }
  if (r.version_ != 2 && r.version_ != 3) {
    throw_error(ErrorKind::kUnsupported,
                "GGUF version " + std::to_string(r.version_) + "; qtrain reads versions 2 and 3",
                {.file = path});
  }
  const auto tensor_count = in.get<uint64_t>("the tensor count");
  const auto kv_count = in.get<uint64_t>("the metadata count");
  // A key-value pair takes at least 13 bytes (empty key, type, one-byte value); a tensor info 28.
  if (kv_count > in.left() / 13) {
    in.fail(std::to_string(kv_count) + " metadata entries cannot fit in the file");
  }
  if (tensor_count > in.left() / 28) {
    in.fail(std::to_string(tensor_count) + " tensors cannot fit in the file");
  }

  std::unordered_set<std::string> keys;
  for (uint64_t k = 0; k < kv_count; ++k) {
    std::string key = in.string("a metadata key");
    const ErrorContext where{.field = key};
    if (!keys.insert(key).second) in.fail("metadata key appears twice", where);
    const auto type = in.get<uint32_t>("a value type", where);
    if (!is_value_type(type)) in.fail("unknown value type " + std::to_string(type), where);
    GgufValue value = read_value(in, static_cast<GgufValueType>(type), where, 0);
    r.metadata_.emplace_back(std::move(key), std::move(value));
  }
  r.alignment_ = alignment_of(r.metadata_, in);

  std::unordered_set<std::string> names;
  for (uint64_t k = 0; k < tensor_count; ++k) {
    GgufTensorInfo t = read_tensor_info(in);
    if (!names.insert(t.name).second) in.fail("tensor name appears twice", {.tensor = t.name});
    r.tensors_.push_back(std::move(t));
  }
  const uint64_t header_end = in.pos();
  r.data_offset_ = header_end + (r.alignment_ - header_end % r.alignment_) % r.alignment_;

  const uint64_t data_bytes = r.data_offset_ <= size ? size - r.data_offset_ : 0;
  std::vector<const GgufTensorInfo*> by_offset;
  for (const GgufTensorInfo& t : r.tensors_) {
    const ErrorContext where{.file = path, .tensor = t.name};
    if (t.offset % r.alignment_ != 0) {
      throw_error(ErrorKind::kFormat,
                  "tensor offset " + std::to_string(t.offset) + " is not a multiple of the " +
                      std::to_string(r.alignment_) + "-byte alignment",
                  where);
    }
    if (t.offset > data_bytes || t.nbytes > data_bytes - t.offset) {
      throw_error(ErrorKind::kFormat,
                  "tensor data [" + std::to_string(t.offset) + ", +" + std::to_string(t.nbytes) +
                      ") runs past the end of the file (" + std::to_string(data_bytes) +
                      " data bytes)",
                  where);
    }
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensorInfo& prev = *by_offset[k - 1];
    if (prev.offset + prev.nbytes > by_offset[k]->offset) {
      throw_error(ErrorKind::kFormat, "tensor data overlaps that of " + prev.name,
                  {.file = path, .tensor = by_offset[k]->name});
    }
  }
  return r;
}

const GgufValue* GgufReader::find(const std::string& key) const {
  for (const auto& [k, v] : metadata_) {
    if (k == key) return &v;
  }
  return nullptr;
}

namespace {

const GgufValue& typed(const GgufReader& r, const std::string& key, GgufValueType type) {
  const GgufValue* v = r.find(key);
  const ErrorContext where{.file = r.path(), .field = key};
  if (v == nullptr) throw_error(ErrorKind::kFormat, "metadata key is missing", where);
  if (v->type != type) {
    throw_error(ErrorKind::kFormat,
                std::string("metadata key has type ") + gguf_value_type_name(*v) + ", expected " +
                    scalar_type_name(type),
                where);
  }
  return *v;
}

}  // namespace

std::string GgufReader::get_string(const std::string& key) const {
  return typed(*this, key, GgufValueType::kString).s;
}

uint32_t GgufReader::get_u32(const std::string& key) const {
  return static_cast<uint32_t>(typed(*this, key, GgufValueType::kU32).u);
}

float GgufReader::get_f32(const std::string& key) const {
  return static_cast<float>(typed(*this, key, GgufValueType::kF32).f);
}

const GgufTensorInfo* GgufReader::find_tensor(const std::string& name) const {
  for (const GgufTensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::vector<uint8_t> GgufReader::read_bytes(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (t == nullptr) {
    throw_error(ErrorKind::kShape, "no such tensor in the file", {.file = path_, .tensor = name});
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(t->nbytes));
  if (bytes.empty()) return bytes;  // a tensor with a zero dim
  std::ifstream in(path_, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(data_offset_ + t->offset));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!in) {
    throw_error(ErrorKind::kIo, "short read of the tensor's data (did the file change?)",
                {.file = path_, .tensor = name});
  }
  return bytes;
}

at::Tensor GgufReader::read_tensor(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (t == nullptr) {
    throw_error(ErrorKind::kShape, "no such tensor in the file", {.file = path_, .tensor = name});
  }
  at::ScalarType dtype;
  switch (t->type) {
    case GgmlType::kF32:
      dtype = at::kFloat;
      break;
    case GgmlType::kF16:
      dtype = at::kHalf;
      break;
    case GgmlType::kBF16:
      dtype = at::kBFloat16;
      break;
    default:
      throw_error(ErrorKind::kUnsupported,
                  "reading " + ggml_type_name(t->type) + " tensors as values is not supported",
                  {.file = path_, .tensor = name});
  }
  at::Tensor out = at::empty(t->shape(), at::dtype(dtype));
  const std::vector<uint8_t> bytes = read_bytes(name);
  if (!bytes.empty()) std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
  return out;
}

}  // namespace qtrain

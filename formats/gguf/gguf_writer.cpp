#include "formats/gguf/gguf_writer.h"

#include "core/atomic_file.h"
#include "core/error.h"

#include <ATen/ATen.h>

#include <cstring>

namespace qtrain {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "GGUF tensor data is copied from memory as little-endian");

// Tensor data goes out in slices of at most this many elements, so converting a tensor to
// float32 and encoding it never needs more than ~64 MiB beyond the producer's tensor.
constexpr int64_t kChunkElems = int64_t{16} << 20;

template <typename T>
void put(std::string& out, T value) {
  char raw[sizeof(T)];
  std::memcpy(raw, &value, sizeof(T));
  out.append(raw, sizeof(T));
}

void put_type(std::string& out, GgufValueType type) {
  put<uint32_t>(out, static_cast<uint32_t>(type));
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.append(s);
}

template <typename T>
std::string scalar(GgufValueType type, T value) {
  std::string out;
  put_type(out, type);
  put<T>(out, value);
  return out;
}

template <typename T>
std::string array(GgufValueType elem_type, const std::vector<T>& values) {
  std::string out;
  put_type(out, GgufValueType::kArray);
  put_type(out, elem_type);
  put<uint64_t>(out, values.size());
  for (const T& v : values) put<T>(out, v);
  return out;
}

uint64_t pad_to(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

void write_zeros(AtomicFile& file, uint64_t n) {
  static const char kZeros[256] = {};
  while (n > 0) {
    const size_t k = n < sizeof(kZeros) ? static_cast<size_t>(n) : sizeof(kZeros);
    file.write(kZeros, k);
    n -= k;
  }
}

}  // namespace

void GgufWriter::add_kv(const std::string& key, std::string bytes) {
  if (key.empty()) throw_error(ErrorKind::kFormat, "GGUF metadata key is empty");
  if (has_key(key)) throw_error(ErrorKind::kFormat, "duplicate GGUF metadata key", {.field = key});
  if (key == "general.alignment") {
    uint32_t type;
    std::memcpy(&type, bytes.data(), sizeof(type));
    if (type != static_cast<uint32_t>(GgufValueType::kU32)) {
      throw_error(ErrorKind::kFormat, "must be a u32", {.field = key});
    }
    uint32_t value;
    std::memcpy(&value, bytes.data() + sizeof(type), sizeof(value));
    if (value == 0 || (value & (value - 1)) != 0) {
      throw_error(ErrorKind::kFormat, "must be a power of two, got " + std::to_string(value),
                  {.field = key});
    }
  }
  kvs_.push_back({key, std::move(bytes)});
}

void GgufWriter::add_u8(const std::string& k, uint8_t v) {
  add_kv(k, scalar(GgufValueType::kU8, v));
}
void GgufWriter::add_i8(const std::string& k, int8_t v) {
  add_kv(k, scalar(GgufValueType::kI8, v));
}
void GgufWriter::add_u16(const std::string& k, uint16_t v) {
  add_kv(k, scalar(GgufValueType::kU16, v));
}
void GgufWriter::add_i16(const std::string& k, int16_t v) {
  add_kv(k, scalar(GgufValueType::kI16, v));
}
void GgufWriter::add_u32(const std::string& k, uint32_t v) {
  add_kv(k, scalar(GgufValueType::kU32, v));
}
void GgufWriter::add_i32(const std::string& k, int32_t v) {
  add_kv(k, scalar(GgufValueType::kI32, v));
}
void GgufWriter::add_f32(const std::string& k, float v) {
  add_kv(k, scalar(GgufValueType::kF32, v));
}
void GgufWriter::add_bool(const std::string& k, bool v) {
  add_kv(k, scalar<uint8_t>(GgufValueType::kBool, v ? 1 : 0));
}
void GgufWriter::add_u64(const std::string& k, uint64_t v) {
  add_kv(k, scalar(GgufValueType::kU64, v));
}
void GgufWriter::add_i64(const std::string& k, int64_t v) {
  add_kv(k, scalar(GgufValueType::kI64, v));
}
void GgufWriter::add_f64(const std::string& k, double v) {
  add_kv(k, scalar(GgufValueType::kF64, v));
}

void GgufWriter::add_string(const std::string& k, const std::string& v) {
  std::string out;
  put_type(out, GgufValueType::kString);
  put_string(out, v);
  add_kv(k, std::move(out));
}

void GgufWriter::add_array(const std::string& k, const std::vector<uint8_t>& v) {
  add_kv(k, array(GgufValueType::kU8, v));
}
void GgufWriter::add_array(const std::string& k, const std::vector<int8_t>& v) {
  add_kv(k, array(GgufValueType::kI8, v));
}
void GgufWriter::add_array(const std::string& k, const std::vector<uint16_t>& v) {
  add_kv(k, array(GgufValueType::kU16, v));
}
void GgufWriter::add_array(const std::string& k, const std::vector<int16_t>& v) {
  add_kv(k, array(GgufValueType::kI16, v));
}
void GgufWriter::add_array(const std::string& k, const std::vector<uint32_t>& v) {
  add_kv(k, array(GgufValueType::kU32, v));
}
void GgufWriter::add_array(const std::string& k, const std::vector<int32_t>& v) {
  add_kv(k, array(GgufValueType::kI32, v));
}
void GgufWriter::add_array(const std::string& k, const std::vector<float>& v) {
  add_kv(k, array(GgufValueType::kF32, v));
}
void GgufWriter::add_array(const std::string& k, const std::vector<uint64_t>& v) {
  add_kv(k, array(GgufValueType::kU64, v));
}
void GgufWriter::add_array(const std::string& k, const std::vector<int64_t>& v) {
  add_kv(k, array(GgufValueType::kI64, v));
}
void GgufWriter::add_array(const std::string& k, const std::vector<double>& v) {
  add_kv(k, array(GgufValueType::kF64, v));
}

void GgufWriter::add_array(const std::string& k, const std::vector<std::string>& v) {
  std::string out;
  put_type(out, GgufValueType::kArray);
  put_type(out, GgufValueType::kString);
  put<uint64_t>(out, v.size());
  for (const auto& s : v) put_string(out, s);
  add_kv(k, std::move(out));
}

void GgufWriter::add_bool_array(const std::string& k, const std::vector<bool>& v) {
  std::vector<uint8_t> bytes(v.begin(), v.end());
  add_kv(k, array(GgufValueType::kBool, bytes));
}

bool GgufWriter::has_key(const std::string& key) const {
  for (const auto& kv : kvs_) {
    if (kv.key == key) return true;
  }
  return false;
}

uint32_t GgufWriter::alignment() const {
  for (const auto& kv : kvs_) {
    if (kv.key != "general.alignment") continue;
    uint32_t value;
    std::memcpy(&value, kv.bytes.data() + sizeof(uint32_t), sizeof(value));
    return value;
  }
  return kGgufDefaultAlignment;
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& shape,
                            GgmlType type, GgufTensorProducer producer) {
  const ErrorContext where{.tensor = name};
  if (name.empty()) throw_error(ErrorKind::kFormat, "GGUF tensor name is empty");
  if (name.size() > kGgufMaxNameBytes) {
    throw_error(ErrorKind::kFormat,
                "GGUF tensor names must be shorter than 64 bytes (" + std::to_string(name.size()) +
                    " given)",
                where);
  }
  for (const auto& t : tensors_) {
    if (t.name == name) throw_error(ErrorKind::kFormat, "duplicate GGUF tensor name", where);
  }
  if (shape.empty() || shape.size() > kGgufMaxDims) {
    throw_error(ErrorKind::kFormat,
                "GGUF tensors have 1 to 4 dims, got " + std::to_string(shape.size()), where);
  }
  for (int64_t d : shape) {
    if (d < 0) throw_error(ErrorKind::kFormat, "negative dimension", where);
  }
  std::vector<int64_t> ne(shape.rbegin(), shape.rend());
  uint64_t nbytes;
  try {
    nbytes = ggml_nbytes(type, ne);
  } catch (const Error& e) {
    throw e.with_context(where);
  }
  if (!producer) throw_error(ErrorKind::kInternal, "no data producer", where);
  tensors_.push_back({name, shape, type, nbytes, std::move(producer)});
}

void GgufWriter::add_tensor(const std::string& name, const at::Tensor& tensor, GgmlType type) {
  add_tensor(name, tensor.sizes().vec(), type, [tensor] { return tensor; });
}

void GgufWriter::add_encoded_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                    GgmlType type, GgufTensorProducer producer) {
  add_tensor(name, shape, type, std::move(producer));
  tensors_.back().encoded = true;
}

std::vector<uint64_t> GgufWriter::tensor_offsets() const {
  const uint64_t align = alignment();
  std::vector<uint64_t> offsets;
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    offsets.push_back(offset);
    offset += pad_to(t.nbytes, align);
  }
  return offsets;
}

std::string GgufWriter::header_bytes() const {
  std::string out;
  put<uint32_t>(out, kGgufMagic);
  put<uint32_t>(out, kGgufVersion);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kvs_.size());
  for (const auto& kv : kvs_) {
    put_string(out, kv.key);
    out.append(kv.bytes);
  }
  const std::vector<uint64_t> offsets = tensor_offsets();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const TensorEntry& t = tensors_[i];
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put<uint64_t>(out, *it);
    put<uint32_t>(out, static_cast<uint32_t>(t.type));
    put<uint64_t>(out, offsets[i]);
  }
  return out;
}

void GgufWriter::write(const std::string& path) {
  if (written_) throw_error(ErrorKind::kInternal, "GgufWriter::write called twice", {.file = path});
  written_ = true;
  const uint64_t align = alignment();
  AtomicFile file(path);

  const std::string header = header_bytes();
  file.write(header.data(), header.size());
  write_zeros(file, pad_to(file.bytes_written(), align) - file.bytes_written());
  const uint64_t data_start = file.bytes_written();

  const std::vector<uint64_t> offsets = tensor_offsets();
  std::vector<uint8_t> buffer;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    TensorEntry& entry = tensors_[i];
    const ErrorContext where{.file = path, .tensor = entry.name};
    if (file.bytes_written() - data_start != offsets[i]) {
      throw_error(ErrorKind::kInternal, "tensor data out of place", where);
    }
    at::Tensor tensor = entry.producer();
    entry.producer = nullptr;  // drop anything the producer holds once its tensor is out
    if (entry.encoded) {
      if (tensor.scalar_type() != at::kByte ||
          static_cast<uint64_t>(tensor.numel()) != entry.nbytes) {
        throw_error(ErrorKind::kShape,
                    "encoded data has " + std::to_string(tensor.numel()) + " " +
                        c10::toString(tensor.scalar_type()) + " values, " +
                        std::to_string(entry.nbytes) + " bytes expected",
                    where);
      }
      const at::Tensor bytes = tensor.to(at::kCPU).contiguous();
      file.write(bytes.data_ptr<uint8_t>(), entry.nbytes);
      write_zeros(file, pad_to(entry.nbytes, align) - entry.nbytes);
      continue;
    }
    if (tensor.sizes().vec() != entry.shape) {
      throw_error(ErrorKind::kShape,
                  "produced shape " + c10::str(tensor.sizes()) + " differs from the registered " +
                      c10::str(at::IntArrayRef(entry.shape)),
                  where);
    }
    if (tensor.numel() > 0) {
      const int64_t ne0 = entry.shape.back();
      const int64_t rows = tensor.numel() / ne0;
      const uint64_t row_bytes = ggml_nbytes(entry.type, {ne0});
      const int64_t chunk_rows = std::max<int64_t>(1, kChunkElems / ne0);
      at::Tensor matrix = tensor.reshape({rows, ne0});
      for (int64_t r = 0; r < rows; r += chunk_rows) {
        const int64_t n = std::min(chunk_rows, rows - r);
        buffer.resize(static_cast<size_t>(n) * row_bytes);
        try {
          ggml_encode_rows(entry.type, matrix.narrow(0, r, n), buffer.data());
        } catch (const Error& e) {
          throw e.with_context(where);
        }
        file.write(buffer.data(), buffer.size());
      }
    }
    if (file.bytes_written() - data_start != offsets[i] + entry.nbytes) {
      throw_error(ErrorKind::kInternal, "tensor data has the wrong size", where);
    }
    write_zeros(file, pad_to(entry.nbytes, align) - entry.nbytes);
  }
  file.commit();
}

}  // namespace qtrain

// GgufWriter: writes a GGUF v3 file (reference/formats.md §7.1) from typed metadata and tensors
// whose data is produced one at a time while writing, so a large model never sits whole in memory.
//
// File layout (little-endian):
//   u32 magic "GGUF" | u32 version 3 | u64 tensor_count | u64 kv_count
//   kv_count x  { string key | u32 value_type | value }
//   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   zero padding to ALIGNMENT
//   tensor data, each tensor padded with zeros to ALIGNMENT (the last one too)
// string = u64 byte length + UTF-8 bytes (no NUL); array = u32 elem_type + u64 count + elements.
// ALIGNMENT is the u32 "general.alignment" when set, else 32. Offsets are relative to the start of
// the tensor data and equal the running sum of the padded sizes of the tensors before.
//
// Usage:
//   GgufWriter w;
//   w.add_string("general.architecture", "llama");
//   w.add_u32("llama.block_count", 32);
//   w.add_tensor("token_embd.weight", {V, H}, GgmlType::kF16, [&] { return load(...); });
//   w.write("model.gguf");  // temp file + fsync + rename
#pragma once

#include "formats/gguf/gguf_types.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace qtrain {

enum class GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kGgufVersion = 3;
constexpr uint32_t kGgufDefaultAlignment = 32;
constexpr size_t kGgufMaxNameBytes = 63;  // ggml's GGML_MAX_NAME (64) counts the NUL
constexpr size_t kGgufMaxDims = 4;

// Returns a CPU tensor with the registered torch shape and a floating dtype. Called once, while
// writing.
using GgufTensorProducer = std::function<at::Tensor()>;

class GgufWriter {
 public:
  // Metadata. Keys keep insertion order; a repeated key throws Error(kFormat).
  void add_u8(const std::string& key, uint8_t value);
  void add_i8(const std::string& key, int8_t value);
  void add_u16(const std::string& key, uint16_t value);
  void add_i16(const std::string& key, int16_t value);
  void add_u32(const std::string& key, uint32_t value);
  void add_i32(const std::string& key, int32_t value);
  void add_f32(const std::string& key, float value);
  void add_bool(const std::string& key, bool value);
  void add_string(const std::string& key, const std::string& value);
  void add_u64(const std::string& key, uint64_t value);
  void add_i64(const std::string& key, int64_t value);
  void add_f64(const std::string& key, double value);

  void add_array(const std::string& key, const std::vector<uint8_t>& values);
  void add_array(const std::string& key, const std::vector<int8_t>& values);
  void add_array(const std::string& key, const std::vector<uint16_t>& values);
  void add_array(const std::string& key, const std::vector<int16_t>& values);
  void add_array(const std::string& key, const std::vector<uint32_t>& values);
  void add_array(const std::string& key, const std::vector<int32_t>& values);
  void add_array(const std::string& key, const std::vector<float>& values);
  void add_array(const std::string& key, const std::vector<uint64_t>& values);
  void add_array(const std::string& key, const std::vector<int64_t>& values);
  void add_array(const std::string& key, const std::vector<double>& values);
  void add_array(const std::string& key, const std::vector<std::string>& values);
  void add_bool_array(const std::string& key, const std::vector<bool>& values);

  // Registers a tensor. `shape` is the torch shape (outermost first; GGUF stores it reversed as
  // ne); `producer` is called during write(). Throws Error(kFormat) for a repeated or too long
  // (> 63 bytes) name, 0 or more than 4 dims, or a negative dim, and Error(kShape) when the
  // innermost dim is not a multiple of the type's block size.
  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type,
                  GgufTensorProducer producer);
  // Convenience: a tensor already in memory (kept alive until write()).
  void add_tensor(const std::string& name, const at::Tensor& tensor, GgmlType type);
  // A tensor whose bytes the caller encoded itself (blocks built from something other than float
  // values, e.g. INT4 codes that must be kept as they are): `producer` returns uint8 holding
  // exactly the type's bytes for `shape` (any shape; read in row-major order). Same checks as
  // add_tensor; write() throws Error(kShape) when the byte count differs.
  void add_encoded_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type,
                          GgufTensorProducer producer);

  bool has_key(const std::string& key) const;
  size_t kv_count() const { return kvs_.size(); }
  size_t tensor_count() const { return tensors_.size(); }
  // ALIGNMENT: general.alignment when set (it must be a u32 power of two), else 32.
  uint32_t alignment() const;
  // Byte offset of each tensor relative to the start of the tensor data, in registration order.
  std::vector<uint64_t> tensor_offsets() const;

  // Writes the file atomically: a temp file next to `path`, fsync, rename. Throws Error(kIo) on
  // I/O failures, Error(kShape) when a producer returns a tensor of another shape; on any error
  // the temp file is removed and `path` is left untouched. A writer can be written once.
  void write(const std::string& path);

 private:
  struct Kv {
    std::string key;
    std::string bytes;  // u32 value_type + encoded value
  };
  struct TensorEntry {
    std::string name;
    std::vector<int64_t> shape;  // torch order
    GgmlType type;
    uint64_t nbytes;
    GgufTensorProducer producer;
    bool encoded = false;  // the producer returns the type's bytes, not values
  };

  void add_kv(const std::string& key, std::string bytes);
  std::string header_bytes() const;

  std::vector<Kv> kvs_;
  std::vector<TensorEntry> tensors_;
  bool written_ = false;
};

}  // namespace qtrain

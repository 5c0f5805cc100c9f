// GgufReader: reads and validates a GGUF v2/v3 file (reference/formats.md §7.1) written by anyone:
// its metadata, its tensor table and, on request, a tensor's bytes.
//
// Everything the reader relies on is checked before it is used, so a corrupt or hostile file gives
// Error(kFormat) naming the file, the byte offset and the key or tensor, never a crash or a huge
// allocation: lengths and counts against the bytes left in the file, value and tensor types,
// duplicate keys and tensor names, names under 64 bytes, 1 to 4 dims, element and byte counts
// without overflow, general.alignment a u32 power of two, tensor offsets aligned, inside the data
// section and not overlapping. Version 1 files, big-endian files and tensor types qtrain does not
// know give Error(kUnsupported).
#pragma once

#include "formats/gguf/gguf_types.h"
#include "formats/gguf/gguf_writer.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qtrain {

struct GgufValue {
  GgufValueType type = GgufValueType::kU8;
  uint64_t u = 0;                                // U8, U16, U32, U64, BOOL (0 or 1)
  int64_t i = 0;                                 // I8, I16, I32, I64
  double f = 0;                                  // F32, F64
  std::string s;                                 // STRING
  GgufValueType elem_type = GgufValueType::kU8;  // ARRAY
  std::vector<GgufValue> items;                  // ARRAY
};

// "U32", "STRING", "ARRAY[STRING]", ...
std::string gguf_value_type_name(const GgufValue& value);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // GGUF order: ne[0] innermost
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;  // relative to the start of the tensor data
  uint64_t nbytes = 0;
  // The torch shape: ne reversed.
  std::vector<int64_t> shape() const { return {ne.rbegin(), ne.rend()}; }
};

class GgufReader {
 public:
  // Reads the header and tensor table of `path`; tensor data is read only on request.
  static GgufReader open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the tensor data
  uint64_t file_size() const { return file_size_; }

  // In file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* find(const std::string& key) const;
  // Typed lookups: Error(kFormat) naming the key when it is missing or of another type.
  std::string get_string(const std::string& key) const;
  uint32_t get_u32(const std::string& key) const;
  float get_f32(const std::string& key) const;

  // In file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // The stored bytes of `name` (nbytes of them). Error(kShape) for an unknown name.
  std::vector<uint8_t> read_bytes(const std::string& name) const;
  // An F32, F16 or BF16 tensor as a CPU tensor of that dtype and the torch shape; other types
  // give Error(kUnsupported).
  at::Tensor read_tensor(const std::string& name) const;

 private:
  std::string path_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  uint64_t file_size_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
};

}  // namespace qtrain

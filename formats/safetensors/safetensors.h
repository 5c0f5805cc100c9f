// safetensors files: an mmap'd reader with zero-copy tensor views, a sharded-checkpoint reader
// (model.safetensors or model.safetensors.index.json + shards) and an atomic, sharding writer.
//
// Layout (see reference/formats.md §6): u64 little-endian header length N, N bytes of JSON
// {"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [begin, end)}}, then the data
// buffer. The reader validates everything it relies on: header bounds, JSON shape, dtype names,
// byte counts against shapes, offsets inside the buffer and tiling without holes or overlap.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qtrain {

struct TensorInfo {
  std::string name;
  std::string dtype;  // safetensors spelling, e.g. "BF16"
  at::ScalarType scalar_type;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the data buffer, end exclusive
  uint64_t end = 0;
};

class MappedFile;

class SafetensorsFile {
 public:
  // Maps the file and validates its header. Throws Error(kIo) if it cannot be opened,
  // Error(kFormat) naming the file (and tensor) if it is malformed.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Tensor names in data-offset order.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }
  // Throws Error(kShape) naming the tensor and file when absent.
  const TensorInfo& info(const std::string& name) const;
  // A CPU tensor viewing the mapped bytes (copy-on-write mapping: writing to it never changes
  // the file). It keeps the mapping alive for as long as it lives.
  at::Tensor tensor(const std::string& name) const;
  // Raw bytes of a tensor inside the mapping.
  const uint8_t* data(const std::string& name) const;
  // Drops the mapped pages that lie wholly inside the tensor's bytes from this process's
  // resident memory (they are read again from the file if touched). Streaming loaders call it
  // once a tensor is consumed so resident memory stays near one tensor, not the whole shard.
  void evict(const std::string& name) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  std::shared_ptr<MappedFile> mapping_;
  uint64_t data_start_ = 0;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorInfo> infos_;
  std::vector<std::string> names_;
};

// A Hugging Face checkpoint directory: either model.safetensors, or model.safetensors.index.json
// whose weight_map names the shard of every tensor. `index_name` lets other prefixes
// (adapter_model.safetensors ...) share the code.
class CheckpointReader {
 public:
  static CheckpointReader open_dir(const std::string& dir, const std::string& base_name = "model");
  static CheckpointReader open_file(const std::string& path);

  // Every tensor in the checkpoint, sorted by name.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return shard_of_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;
  // The shard file holding a tensor.
  const std::string& file_of(const std::string& name) const;
  // See SafetensorsFile::evict.
  void evict(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  static CheckpointReader open_index(const std::string& dir, const std::string& index_path);
  const SafetensorsFile& shard(const std::string& name) const;

  std::string location_;  // the directory or file opened, for error messages
  std::map<std::string, std::shared_ptr<SafetensorsFile>> shards_;  // by path
  std::map<std::string, std::string> shard_of_;                     // tensor name -> shard path
  std::map<std::string, std::string> metadata_;                     // from the first shard
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes one safetensors file atomically (temp file in the same directory, fsync, rename), so a
// crash never leaves a half-written file under `path`. Tensors are written contiguous, little
// endian, in the given order. Duplicate names are an error.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

struct ShardOptions {
  uint64_t max_shard_bytes = 5'000'000'000ULL;  // HF's default max_shard_size
  std::string base_name = "model";              // model.safetensors / model-00001-of-00002...
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
};

// Writes `tensors` into `dir` like transformers' save_pretrained: one `<base>.safetensors` when
// everything fits in one shard, else `<base>-0000i-of-0000N.safetensors` filled greedily in order
// plus `<base>.safetensors.index.json`. A tensor larger than max_shard_bytes gets a shard of its
// own. Returns the paths of the files written (index last). Files already in `dir` are left alone.
std::vector<std::string> write_checkpoint(const std::string& dir, const NamedTensors& tensors,
                                          const ShardOptions& options = {});

// Streaming form of write_checkpoint for outputs too large to hold: `specs` name every tensor's
// dtype and shape up front (they fix the shard plan and the headers), and `produce(spec)` is
// called once per tensor, in order, while its shard is written; the returned tensor must have
// that dtype and shape (else Error(kShape) naming it) and can be released right after. Host
// memory stays near one tensor.
struct StreamedTensor {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
};
using TensorProducer = std::function<at::Tensor(const StreamedTensor&)>;
std::vector<std::string> write_checkpoint_streaming(const std::string& dir,
                                                    const std::vector<StreamedTensor>& specs,
                                                    const TensorProducer& produce,
                                                    const ShardOptions& options = {});

}  // namespace qtrain

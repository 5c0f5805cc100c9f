// The safetensors writers: one file, or a checkpoint sharded like transformers' save_pretrained,
// every file staged and renamed into place.
#include "formats/safetensors/safetensors.h"

#include "core/atomic_file.h"
#include "core/dtype.h"
#include "core/error.h"
#include "formats/safetensors/safetensors_internal.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

namespace qtrain {
using nlohmann::json;
using safetensors_internal::errno_text;
using safetensors_internal::join_path;

namespace {

void make_directories(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i < dir.size() && dir[i] != '/') continue;
    if (::mkdir(dir.substr(0, i).c_str(), 0777) != 0 && errno != EEXIST) {
      throw_error(ErrorKind::kIo, "cannot create directory: " + errno_text(), {.file = dir});
    }
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    throw_error(ErrorKind::kIo, "not a directory", {.file = dir});
  }
}

struct Planned {
  const StreamedTensor* spec;
  uint64_t bytes;
};

// Checks every input before anything touches the disk.
std::vector<Planned> plan_specs(const std::string& path, const std::vector<StreamedTensor>& specs) {
  std::vector<Planned> planned;
  std::set<std::string> seen;
  for (const StreamedTensor& spec : specs) {
    ErrorContext where{.file = path, .tensor = spec.name};
    if (spec.name == "__metadata__") {
      throw_error(ErrorKind::kShape, "__metadata__ is reserved and cannot name a tensor", where);
    }
    if (!seen.insert(spec.name).second) {
      throw_error(ErrorKind::kShape, "duplicate tensor name", where);
    }
    try {
      safetensors_dtype_name(spec.dtype);
    } catch (const Error& e) {
      throw e.with_context(where);
    }
    uint64_t elements = 1;
    for (int64_t d : spec.shape) {
      if (d < 0) throw_error(ErrorKind::kShape, "negative dimension", where);
      elements *= static_cast<uint64_t>(d);
    }
    planned.push_back({&spec, elements * element_size(spec.dtype)});
  }
  return planned;
}

std::vector<StreamedTensor> specs_of(const std::string& path, const NamedTensors& tensors) {
  std::vector<StreamedTensor> specs;
  for (const auto& [name, tensor] : tensors) {
    ErrorContext where{.file = path, .tensor = name};
    if (!tensor.defined()) throw_error(ErrorKind::kShape, "tensor is undefined", where);
    if (tensor.layout() != at::kStrided || tensor.is_meta()) {
      throw_error(ErrorKind::kUnsupported, "only dense tensors with data can be saved", where);
    }
    specs.push_back({name, tensor.scalar_type(), tensor.sizes().vec()});
  }
  return specs;
}

TensorProducer producer_of(const NamedTensors& tensors) {
  auto index = std::make_shared<std::map<std::string, const at::Tensor*>>();
  for (const auto& [name, tensor] : tensors) (*index)[name] = &tensor;
  return [index](const StreamedTensor& spec) { return *index->at(spec.name); };
}

std::string build_header(const std::string& path, const std::vector<Planned>& planned,
                         const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const Planned& p : planned) {
    nlohmann::ordered_json entry;
    entry["dtype"] = safetensors_dtype_name(p.spec->dtype);
    entry["shape"] = p.spec->shape;
    entry["data_offsets"] = {offset, offset + p.bytes};
    header[p.spec->name] = std::move(entry);
    offset += p.bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw_error(ErrorKind::kFormat, std::string("cannot encode the header: ") + e.what(),
                {.file = path});
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void write_planned(const std::string& path, const std::vector<Planned>& planned,
                   const TensorProducer& produce,
                   const std::map<std::string, std::string>& metadata) {
  const std::string header = build_header(path, planned, metadata);
  AtomicFile file(path);
  const uint64_t length = header.size();
  file.write(&length, 8);
  file.write(header);
  for (const Planned& p : planned) {
    if (p.bytes == 0) continue;
    const at::Tensor produced = produce(*p.spec);
    if (!produced.defined() || produced.scalar_type() != p.spec->dtype ||
        produced.sizes().vec() != p.spec->shape) {
      throw_error(ErrorKind::kShape,
                  "produced tensor does not match its announced dtype and shape " +
                      c10::str(at::IntArrayRef(p.spec->shape)),
                  {.file = path, .tensor = p.spec->name});
    }
    // One tensor at a time: a device tensor is copied to host only while it is written.
    at::Tensor host = produced.detach().to(at::kCPU).resolve_conj().resolve_neg().contiguous();
    file.write(host.data_ptr(), p.bytes);
  }
  file.commit();
}

std::string shard_name(const std::string& base, size_t index, size_t count) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "-%05zu-of-%05zu.safetensors", index, count);
  return base + buffer;
}

// Greedy in order; a tensor over the limit is flushed into a shard of its own.
std::vector<std::vector<Planned>> plan_shards(const std::vector<Planned>& planned,
                                              uint64_t max_shard_bytes) {
  std::vector<std::vector<Planned>> shards;
  std::vector<Planned> current;
  uint64_t current_bytes = 0;
  auto flush = [&] {
    if (!current.empty()) shards.push_back(std::move(current));
    current.clear();
    current_bytes = 0;
  };
  for (const Planned& p : planned) {
    if (p.bytes > max_shard_bytes) {
      flush();
      shards.push_back({p});
      continue;
    }
    if (current_bytes + p.bytes > max_shard_bytes) flush();
    current.push_back(p);
    current_bytes += p.bytes;
  }
  flush();
  return shards;
}

// The text of <base>.safetensors.index.json: every tensor's shard and the total data size.
std::string index_text(const std::string& dir, uint64_t total_bytes, const json& weight_map) {
  json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  std::string text;
  try {
    text = index.dump(2) + "\n";
  } catch (const json::exception& e) {
    throw_error(ErrorKind::kFormat, std::string("cannot encode the index: ") + e.what(),
                {.file = dir});
  }
  return text;
}

}  // namespace

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::vector<StreamedTensor> specs = specs_of(path, tensors);
  write_planned(path, plan_specs(path, specs), producer_of(tensors), metadata);
}

std::vector<std::string> write_checkpoint(const std::string& dir, const NamedTensors& tensors,
                                          const ShardOptions& options) {
  const std::vector<StreamedTensor> specs = specs_of(dir, tensors);
  return write_checkpoint_streaming(dir, specs, producer_of(tensors), options);
}

std::vector<std::string> write_checkpoint_streaming(const std::string& dir,
                                                    const std::vector<StreamedTensor>& specs,
                                                    const TensorProducer& produce,
                                                    const ShardOptions& options) {
  const std::vector<Planned> planned = plan_specs(dir, specs);
  make_directories(dir);
  const std::vector<std::vector<Planned>> shards = plan_shards(planned, options.max_shard_bytes);

  if (shards.size() <= 1) {
    std::string path = join_path(dir, options.base_name + ".safetensors");
    write_planned(path, shards.empty() ? std::vector<Planned>{} : shards[0], produce,
                  options.metadata);
    return {path};
  }

  std::vector<std::string> written;
  json weight_map = json::object();
  uint64_t total_bytes = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string name = shard_name(options.base_name, i + 1, shards.size());
    written.push_back(join_path(dir, name));
    write_planned(written.back(), shards[i], produce, options.metadata);
    for (const Planned& p : shards[i]) {
      weight_map[p.spec->name] = name;
      total_bytes += p.bytes;
    }
  }
  const std::string text = index_text(dir, total_bytes, weight_map);
  written.push_back(join_path(dir, options.base_name + ".safetensors.index.json"));
  write_file_atomically(written.back(), text);
  return written;
}

}  // namespace qtrain

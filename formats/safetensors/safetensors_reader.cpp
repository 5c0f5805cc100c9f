// The safetensors reader: an mmap'd, validated SafetensorsFile and the CheckpointReader over a
// single file or the shards named by an index.
#include "formats/safetensors/safetensors.h"

#include "core/dtype.h"
#include "core/error.h"
#include "formats/safetensors/safetensors_internal.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>

namespace qtrain {
using nlohmann::json;
using safetensors_internal::errno_text;
using safetensors_internal::join_path;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
constexpr uint64_t kMaxIndexBytes = 100'000'000;
constexpr int kMaxNesting = 8;  // headers need 3 (root, entry, shape); indexes a few more

bool path_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// A relative path that stays inside its directory.
bool is_contained_relative_path(const std::string& path) {
  if (path.empty() || path[0] == '/') return false;
  std::stringstream parts(path);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part == "..") return false;
  }
  return true;
}

// Builds a JSON value from nlohmann's SAX events, refusing what nlohmann would accept silently:
// duplicate keys (it keeps the last one) and absurd nesting. (nlohmann's parser callback could
// check the same, but its DOM builder rescans the enclosing object whenever a nested object
// closes: a header of n tensors took O(n^2).)
class StrictJsonBuilder {
 public:
  // `outer_depth`: containers already open around the value (a header entry sits in the root).
  StrictJsonBuilder(const std::string& file, int outer_depth)
      : file_(file), outer_depth_(outer_depth) {}

  bool null() { return add(nullptr); }
  bool boolean(bool value) { return add(value); }
  bool number_integer(json::number_integer_t value) { return add(value); }
  bool number_unsigned(json::number_unsigned_t value) { return add(value); }
  bool number_float(json::number_float_t value, const std::string&) { return add(value); }
  bool string(std::string& value) { return add(std::move(value)); }
  bool binary(json::binary_t& value) { return add(json::binary(std::move(value))); }
  bool start_object(std::size_t) { return open(json::object()); }
  bool start_array(std::size_t) { return open(json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool key(std::string& key) {
    if (open_.back()->contains(key)) {
      throw_error(ErrorKind::kFormat, "duplicate JSON key '" + key + "'", {.file = file_});
    }
    key_ = std::move(key);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const json::exception& e) {
    throw_error(ErrorKind::kFormat, std::string("invalid JSON: ") + e.what(), {.file = file_});
  }

  // Whether a container of the value is still open.
  bool is_open() const { return !open_.empty(); }
  // Whether a whole value has been read (and not yet taken).
  bool complete() const { return complete_; }
  json take() {
    complete_ = false;
    return std::move(value_);
  }

 private:
  json* place(json&& value) {
    if (open_.empty()) {
      value_ = std::move(value);
      return &value_;
    }
    json& parent = *open_.back();
    if (parent.is_array()) {
      parent.get_ref<json::array_t&>().push_back(std::move(value));
      return &parent.get_ref<json::array_t&>().back();
    }
    return &parent.get_ref<json::object_t&>()
                .emplace(std::move(key_), std::move(value))
                .first->second;
  }
  bool add(json&& value) {
    place(std::move(value));
    complete_ = open_.empty();
    return true;
  }
  bool open(json&& container) {
    if (outer_depth_ + static_cast<int>(open_.size()) >= kMaxNesting) {
      throw_error(ErrorKind::kFormat,
                  "JSON nested deeper than " + std::to_string(kMaxNesting) + " levels",
                  {.file = file_});
    }
    open_.push_back(place(std::move(container)));
    return true;
  }
  bool close() {
    open_.pop_back();
    complete_ = open_.empty();
    return true;
  }

  const std::string& file_;
  int outer_depth_;
  std::vector<json*> open_;  // the containers being filled, innermost last
  std::string key_;          // of the next member of the innermost object
  json value_;
  bool complete_ = false;
};

void check_no_nul(const char* begin, const char* end, const std::string& file) {
  // nlohmann stops at a NUL byte as if the input ended there; valid JSON never holds a raw one.
  if (std::find(begin, end, '\0') != end) {
    throw_error(ErrorKind::kFormat, "invalid JSON: NUL byte", {.file = file});
  }
}

json parse_strict(const char* begin, const char* end, const std::string& file) {
  check_no_nul(begin, end, file);
  StrictJsonBuilder builder(file, 0);
  json::sax_parse(begin, end, &builder);
  return builder.take();
}

// A non-negative JSON integer no larger than `limit`.
uint64_t read_count(const json& value, uint64_t limit, const ErrorContext& where,
                    const char* what) {
  if (!value.is_number_integer()) {
    throw_error(ErrorKind::kFormat, std::string(what) + " must be an integer, got " + value.dump(),
                where);
  }
  if (!value.is_number_unsigned()) {
    throw_error(ErrorKind::kFormat, std::string(what) + " is negative: " + value.dump(), where);
  }
  uint64_t n = value.get<uint64_t>();
  if (n > limit) {
    throw_error(ErrorKind::kFormat, std::string(what) + " " + std::to_string(n) + " is too large",
                where);
  }
  return n;
}

TensorInfo parse_entry(const std::string& file, const std::string& name, const json& entry) {
  ErrorContext where{.file = file, .tensor = name};
  if (!entry.is_object()) {
    throw_error(ErrorKind::kFormat, "header entry must be an object, got " + entry.dump(), where);
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) {
      throw_error(ErrorKind::kFormat, "required field is missing",
                  {.file = file, .tensor = name, .field = field});
    }
  }
  TensorInfo info;
  info.name = name;

  where.field = "dtype";
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) throw_error(ErrorKind::kFormat, "dtype must be a string", where);
  info.dtype = dtype.get<std::string>();
  try {
    info.scalar_type = scalar_type_from_safetensors(info.dtype);
  } catch (const Error& e) {
    throw e.with_context(where);
  }

  where.field = "shape";
  const json& shape = entry["shape"];
  if (!shape.is_array()) throw_error(ErrorKind::kFormat, "shape must be an array", where);
  // `span` (dims of 0 counted as 1) bounds both the byte count and every stride ATen computes.
  const uint64_t kLimit = std::numeric_limits<int64_t>::max();
  uint64_t bytes = element_size(info.scalar_type);
  uint64_t span = bytes;
  for (const json& dim : shape) {
    uint64_t n = read_count(dim, kLimit, where, "dimension");
    info.shape.push_back(static_cast<int64_t>(n));
    if (n > 1 && span > kLimit / n) {
      throw_error(ErrorKind::kFormat, "shape " + shape.dump() + " is too large", where);
    }
    span *= std::max<uint64_t>(n, 1);
    bytes *= n;
  }

  where.field = "data_offsets";
  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    throw_error(ErrorKind::kFormat, "data_offsets must be an array [begin, end]", where);
  }
  info.begin = read_count(offsets[0], std::numeric_limits<uint64_t>::max(), where, "begin");
  info.end = read_count(offsets[1], std::numeric_limits<uint64_t>::max(), where, "end");
  if (info.begin > info.end) {
    throw_error(ErrorKind::kFormat,
                "begin " + std::to_string(info.begin) + " is after end " + std::to_string(info.end),
                where);
  }
  // A zero-byte shape (zero-size tensor) may hold any dims; a header lying about them is caught
  // here too.
  if (info.end - info.begin != bytes) {
    throw_error(ErrorKind::kFormat,
                "data_offsets span " + std::to_string(info.end - info.begin) + " bytes but " +
                    info.dtype + " shape " + shape.dump() + " needs " + std::to_string(bytes),
                where);
  }
  return info;
}

std::map<std::string, std::string> parse_metadata(const std::string& file, const json& value) {
  std::map<std::string, std::string> metadata;
  if (value.is_null()) return metadata;  // the reference reader accepts null
  ErrorContext where{.file = file, .field = "__metadata__"};
  if (!value.is_object()) throw_error(ErrorKind::kFormat, "__metadata__ must be an object", where);
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) {
      where.field = "__metadata__." + key;
      throw_error(ErrorKind::kFormat, "metadata values must be strings, got " + v.dump(), where);
    }
    metadata[key] = v.get<std::string>();
  }
  return metadata;
}

// Reads the u64 header length and checks that the header lies inside the file.
uint64_t read_header_length(const std::string& path, const uint8_t* bytes, uint64_t size) {
  if (size < 8) {
    throw_error(ErrorKind::kFormat,
                "file has " + std::to_string(size) + " bytes, too short for a safetensors header",
                {.file = path});
  }
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes, 8);
  if (header_size > kMaxHeaderBytes) {
    throw_error(ErrorKind::kFormat,
                "header length " + std::to_string(header_size) + " exceeds the limit of " +
                    std::to_string(kMaxHeaderBytes) + " bytes",
                {.file = path});
  }
  if (header_size > size - 8) {
    throw_error(ErrorKind::kFormat,
                "header length " + std::to_string(header_size) +
                    " runs past the end of the file (" + std::to_string(size) + " bytes)",
                {.file = path});
  }
  return header_size;
}

// A safetensors header from SAX events: each entry of the root object is built on its own and
// checked as soon as it is complete, so the header's JSON is never held whole. An entry's error
// is raised only once the whole header has parsed, and only if no entry whose name sorts first
// has one: the same error as checking the parsed header entry by entry in name order.
class HeaderReader {
 public:
  HeaderReader(const std::string& path, uint64_t data_size)
      : path_(path), data_size_(data_size), entry_(path, 1) {}

  bool null() {
    return forward([](StrictJsonBuilder& b) { return b.null(); });
  }
  bool boolean(bool value) {
    return forward([&](StrictJsonBuilder& b) { return b.boolean(value); });
  }
  bool number_integer(json::number_integer_t value) {
    return forward([&](StrictJsonBuilder& b) { return b.number_integer(value); });
  }
  bool number_unsigned(json::number_unsigned_t value) {
    return forward([&](StrictJsonBuilder& b) { return b.number_unsigned(value); });
  }
  bool number_float(json::number_float_t value, const std::string& text) {
    return forward([&](StrictJsonBuilder& b) { return b.number_float(value, text); });
  }
  bool string(std::string& value) {
    return forward([&](StrictJsonBuilder& b) { return b.string(value); });
  }
  bool binary(json::binary_t& value) {
    return forward([&](StrictJsonBuilder& b) { return b.binary(value); });
  }
  bool start_object(std::size_t size) {
    if (!root_opened_) {
      root_opened_ = true;
      return true;
    }
    return forward([&](StrictJsonBuilder& b) { return b.start_object(size); });
  }
  bool start_array(std::size_t size) {
    return forward([&](StrictJsonBuilder& b) { return b.start_array(size); });
  }
  bool end_object() {
    if (!entry_.is_open()) return true;  // the root's end
    return forward([](StrictJsonBuilder& b) { return b.end_object(); });
  }
  bool end_array() {
    return forward([](StrictJsonBuilder& b) { return b.end_array(); });
  }
  bool key(std::string& key) {
    if (entry_.is_open()) return entry_.key(key);
    if (holds(key)) {
      throw_error(ErrorKind::kFormat, "duplicate JSON key '" + key + "'", {.file = path_});
    }
    name_ = std::move(key);
    return true;
  }
  bool parse_error(std::size_t position, const std::string& token, const json::exception& e) {
    return entry_.parse_error(position, token, e);
  }

  // The tensors and metadata of a header that parsed; throws the first entry error by name.
  std::map<std::string, TensorInfo> take_infos() {
    if (first_error_) throw *first_error_;
    return std::move(infos_);
  }
  std::map<std::string, std::string> take_metadata() { return std::move(metadata_); }

 private:
  template <typename Event>
  bool forward(Event event) {
    if (!root_opened_) {
      throw_error(ErrorKind::kFormat, "header is not a JSON object", {.file = path_});
    }
    event(entry_);
    if (entry_.complete()) check_entry(std::move(name_), entry_.take());
    return true;
  }

  bool holds(const std::string& name) const {
    return infos_.count(name) != 0 || bad_names_.count(name) != 0 ||
           (name == "__metadata__" && has_metadata_);
  }

  void check_entry(std::string name, const json& entry) {
    try {
      if (name == "__metadata__") {
        metadata_ = parse_metadata(path_, entry);
        has_metadata_ = true;
        return;
      }
      TensorInfo info = parse_entry(path_, name, entry);
      if (info.end > data_size_) {
        throw_error(ErrorKind::kFormat,
                    "data_offsets end " + std::to_string(info.end) + " lies beyond the " +
                        std::to_string(data_size_) + "-byte data buffer",
                    {.file = path_, .tensor = name});
      }
      infos_.emplace(std::move(name), std::move(info));
    } catch (const Error& e) {
      if (!first_error_ || name < first_error_name_) {
        first_error_ = e;
        first_error_name_ = name;
      }
      bad_names_.insert(std::move(name));
    }
  }

  const std::string& path_;
  uint64_t data_size_;
  StrictJsonBuilder entry_;
  bool root_opened_ = false;
  std::string name_;  // of the entry being read
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
  bool has_metadata_ = false;
  std::set<std::string> bad_names_;
  std::optional<Error> first_error_;
  std::string first_error_name_;
};

struct ParsedHeader {
  std::map<std::string, TensorInfo> infos;
  std::map<std::string, std::string> metadata;
};

ParsedHeader parse_header(const std::string& path, const char* header, uint64_t header_size,
                          uint64_t data_size) {
  if (header_size == 0 || header[0] != '{') {
    throw_error(ErrorKind::kFormat, "header does not start with '{'", {.file = path});
  }
  check_no_nul(header, header + header_size, path);
  HeaderReader reader(path, data_size);
  json::sax_parse(header, header + header_size, &reader);
  ParsedHeader parsed;
  parsed.infos = reader.take_infos();
  parsed.metadata = reader.take_metadata();
  return parsed;
}

// The reference reader's rule: sorted by offset, the tensors tile the buffer exactly. Returns the
// tensor names in data-offset order.
std::vector<std::string> check_tiling(const std::string& path,
                                      std::vector<const TensorInfo*> by_offset,
                                      uint64_t data_size) {
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });
  std::vector<std::string> names;
  uint64_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* info : by_offset) {
    if (info->begin < covered) {
      throw_error(ErrorKind::kFormat,
                  "bytes [" + std::to_string(info->begin) + ", " + std::to_string(info->end) +
                      ") overlap tensor '" + previous->name + "'",
                  {.file = path, .tensor = info->name});
    }
    if (info->begin > covered) {
      throw_error(ErrorKind::kFormat,
                  "hole in the data buffer: bytes [" + std::to_string(covered) + ", " +
                      std::to_string(info->begin) + ") belong to no tensor",
                  {.file = path, .tensor = info->name});
    }
    covered = info->end;
    previous = info;
    names.push_back(info->name);
  }
  if (covered != data_size) {
    throw_error(ErrorKind::kFormat,
                "data buffer has " + std::to_string(data_size) + " bytes but the tensors cover " +
                    std::to_string(covered) + " (trailing bytes)",
                {.file = path});
  }
  return names;
}

// Reads model.safetensors.index.json and checks its shape; the weight_map entries are checked by
// the caller.
json read_index(const std::string& index_path) {
  struct stat st;
  if (::stat(index_path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw_error(ErrorKind::kIo, "not a readable regular file", {.file = index_path});
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxIndexBytes) {
    throw_error(ErrorKind::kFormat, "index file is implausibly large", {.file = index_path});
  }
  std::ifstream in(index_path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw_error(ErrorKind::kIo, "read failed", {.file = index_path});
  json root = parse_strict(text.data(), text.data() + text.size(), index_path);
  if (!root.is_object()) {
    throw_error(ErrorKind::kFormat, "index is not a JSON object", {.file = index_path});
  }
  if (root.contains("metadata") && !root["metadata"].is_object()) {
    throw_error(ErrorKind::kFormat, "metadata must be an object",
                {.file = index_path, .field = "metadata"});
  }
  if (!root.contains("weight_map") || !root["weight_map"].is_object()) {
    throw_error(ErrorKind::kFormat, "weight_map is missing or not an object",
                {.file = index_path, .field = "weight_map"});
  }
  return root;
}

}  // namespace

// A private, writable mapping of a whole file: pages written through it are copied, so tensor
// views may be modified in place while the file stays as it is.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    // O_NONBLOCK so that opening a FIFO by mistake fails below instead of hanging.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw_error(ErrorKind::kIo, "cannot open: " + errno_text(), {.file = path});
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw_error(ErrorKind::kIo, "not a readable regular file", {.file = path});
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ > 0) {
      // MAP_NORESERVE: a private writable mapping would otherwise be charged in full against the
      // commit limit, and shards are many gigabytes of which only touched pages are ever copied.
      void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
      if (p == MAP_FAILED) {
        std::string reason = errno_text();
        ::close(fd);
        throw_error(ErrorKind::kIo, "cannot mmap: " + reason, {.file = path});
      }
      data_ = static_cast<uint8_t*>(p);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = std::make_shared<MappedFile>(path);
  const uint8_t* bytes = file->mapping_->data();
  const uint64_t size = file->mapping_->size();
  const uint64_t header_size = read_header_length(path, bytes, size);
  file->data_start_ = 8 + header_size;
  const uint64_t data_size = size - file->data_start_;
  ParsedHeader header =
      parse_header(path, reinterpret_cast<const char*>(bytes + 8), header_size, data_size);
  file->infos_ = std::move(header.infos);
  file->metadata_ = std::move(header.metadata);
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(file->infos_.size());
  for (const auto& entry : file->infos_) by_offset.push_back(&entry.second);
  file->names_ = check_tiling(path, std::move(by_offset), data_size);
  return file;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = infos_.find(name);
  if (it == infos_.end()) {
    throw_error(ErrorKind::kShape, "no such tensor in the file", {.file = path_, .tensor = name});
  }
  return it->second;
}

const uint8_t* SafetensorsFile::data(const std::string& name) const {
  return mapping_->data() + data_start_ + info(name).begin;
}

void SafetensorsFile::evict(const std::string& name) const {
  const TensorInfo& i = info(name);
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(mapping_->data() + data_start_ + i.begin);
  const uintptr_t end = reinterpret_cast<uintptr_t>(mapping_->data() + data_start_ + i.end);
  const uintptr_t first = (begin + page - 1) / page * page;  // pages shared with neighbours stay
  const uintptr_t last = end / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo& i = info(name);
  auto options = at::TensorOptions().dtype(i.scalar_type).device(at::kCPU);
  if (i.begin == i.end) return at::empty(i.shape, options);
  uint8_t* bytes = mapping_->data() + data_start_ + i.begin;
  // Offsets are only naturally aligned when the header length is a multiple of 8 (every known
  // writer pads it so); kernels may assume aligned elements, so misaligned data is copied.
  if (reinterpret_cast<uintptr_t>(bytes) % element_size(i.scalar_type) != 0) {
    at::Tensor copy = at::empty(i.shape, options);
    std::memcpy(copy.data_ptr(), bytes, i.end - i.begin);
    return copy;
  }
  std::shared_ptr<MappedFile> keep_alive = mapping_;
  return at::from_blob(
      bytes, i.shape, [keep_alive](void*) {}, options);
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

CheckpointReader CheckpointReader::open_file(const std::string& path) {
  CheckpointReader reader;
  reader.location_ = path;
  auto file = SafetensorsFile::open(path);
  for (const std::string& name : file->names()) reader.shard_of_[name] = path;
  reader.metadata_ = file->metadata();
  reader.shards_[path] = std::move(file);
  return reader;
}

CheckpointReader CheckpointReader::open_dir(const std::string& dir, const std::string& base_name) {
  const std::string single = join_path(dir, base_name + ".safetensors");
  const std::string index = single + ".index.json";
  // transformers prefers the single file when both exist; so do we.
  if (path_exists(single)) return open_file(single);
  if (path_exists(index)) return open_index(dir, index);
  // Pickles can run code when loaded; model files are data, so they are refused by name.
  const std::string pickle_prefix = base_name == "model" ? "pytorch_model" : base_name;
  for (const std::string& pickle : {pickle_prefix + ".bin", pickle_prefix + ".bin.index.json"}) {
    if (path_exists(join_path(dir, pickle))) {
      throw_error(ErrorKind::kUnsupported,
                  "pickled " + pickle +
                      " is not read: model files are data, never code; convert it to "
                      "safetensors (save_pretrained(dir, safe_serialization=True))",
                  {.file = dir});
    }
  }
  throw_error(ErrorKind::kIo,
              "no " + base_name + ".safetensors or " + base_name +
                  ".safetensors.index.json in the directory",
              {.file = dir});
}

CheckpointReader CheckpointReader::open_index(const std::string& dir,
                                              const std::string& index_path) {
  json root = read_index(index_path);

  CheckpointReader reader;
  reader.location_ = dir;
  for (const auto& [name, shard] : root["weight_map"].items()) {
    ErrorContext where{.file = index_path, .tensor = name, .field = "weight_map"};
    if (!shard.is_string()) throw_error(ErrorKind::kFormat, "shard name must be a string", where);
    const std::string relative = shard.get<std::string>();
    if (!is_contained_relative_path(relative)) {
      throw_error(ErrorKind::kFormat,
                  "shard '" + relative + "' is not a file inside the checkpoint", where);
    }
    reader.shard_of_[name] = join_path(dir, relative);
  }

  for (const auto& [name, shard_path] : reader.shard_of_) {
    auto it = reader.shards_.find(shard_path);
    if (it == reader.shards_.end()) {
      if (!path_exists(shard_path)) {
        throw_error(ErrorKind::kIo, "shard named by " + index_path + " is missing",
                    {.file = shard_path});
      }
      it = reader.shards_.emplace(shard_path, SafetensorsFile::open(shard_path)).first;
    }
    if (!it->second->contains(name)) {
      throw_error(ErrorKind::kFormat,
                  "the index maps the tensor to " + shard_path + " but that shard does not hold it",
                  {.file = index_path, .tensor = name});
    }
  }
  for (const auto& [shard_path, file] : reader.shards_) {
    for (const std::string& name : file->names()) {
      auto it = reader.shard_of_.find(name);
      if (it == reader.shard_of_.end() || it->second != shard_path) {
        throw_error(ErrorKind::kFormat,
                    "the shard holds the tensor but " + index_path + " does not map it here",
                    {.file = shard_path, .tensor = name});
      }
    }
  }
  if (!reader.shards_.empty()) reader.metadata_ = reader.shards_.begin()->second->metadata();
  return reader;
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> names;
  names.reserve(shard_of_.size());
  for (const auto& entry : shard_of_) names.push_back(entry.first);
  return names;
}

void CheckpointReader::evict(const std::string& name) const {
  shard(name).evict(name);
}

const std::string& CheckpointReader::file_of(const std::string& name) const {
  auto it = shard_of_.find(name);
  if (it == shard_of_.end()) {
    throw_error(ErrorKind::kShape, "no such tensor in the checkpoint",
                {.file = location_, .tensor = name});
  }
  return it->second;
}

const SafetensorsFile& CheckpointReader::shard(const std::string& name) const {
  return *shards_.at(file_of(name));
}

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  return shard(name).info(name);
}

at::Tensor CheckpointReader::tensor(const std::string& name) const {
  return shard(name).tensor(name);
}

}  // namespace qtrain

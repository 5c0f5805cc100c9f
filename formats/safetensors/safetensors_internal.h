// Helpers shared by safetensors_reader.cpp and safetensors_writer.cpp; not part of the API.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>

// Both the reader and the writers take tensor bytes and the header length as they lie in memory.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little endian and is mapped as is");

namespace qtrain::safetensors_internal {

inline std::string errno_text() {
  return std::strerror(errno);
}

// Plain POSIX path helpers (this one, the reader's path_exists, the writer's make_directories):
// the torch wheel's libtorch.so exports its own, partly broken, copies of std::filesystem
// (pytorch/pytorch#133437), which win symbol lookup over libstdc++'s.
inline std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

}  // namespace qtrain::safetensors_internal

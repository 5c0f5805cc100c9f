// Small string helpers shared across the libraries.
#pragma once

#include <cstdint>
#include <string_view>

namespace qtrain {

inline bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// 64-bit FNV-1a: a stable hash of bytes (the same on every platform and run, unlike std::hash).
inline uint64_t fnv1a_64(std::string_view text) {
  uint64_t hash = 1469598103934665603ULL;
  for (unsigned char c : text) hash = (hash ^ c) * 1099511628211ULL;
  return hash;
}

}  // namespace qtrain

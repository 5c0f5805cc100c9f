// Small string helpers shared across the libraries.
#pragma once

#include <string_view>

namespace qtrain {

inline bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace qtrain

// A tensor shape as error messages print it: "[2, 3]", "[]" for a 0-dim shape (the same text as
// c10's operator<< for an IntArrayRef).
#pragma once

#include <c10/util/ArrayRef.h>

#include <string>

namespace qtrain {

// c10::IntArrayRef is at::IntArrayRef; a std::vector<int64_t> or {a, b} converts implicitly.
std::string shape_string(c10::IntArrayRef shape);

}  // namespace qtrain

// Helpers shared by the safetensors tests.
#pragma once

#include "core/error.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>

namespace qtrain::testing {

// Runs `f` and returns the qtrain::Error it throws; records a failure when it throws nothing.
template <typename F>
Error capture_error(F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected a qtrain::Error";
  return Error(ErrorKind::kInternal, "no error was thrown");
}

// The bytes of a tensor in C order.
inline std::string bytes_of(const at::Tensor& t) {
  at::Tensor c = t.cpu().resolve_conj().resolve_neg().contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

// Same dtype, same shape, same bits.
inline ::testing::AssertionResult bit_equal(const at::Tensor& expected, const at::Tensor& actual) {
  if (expected.scalar_type() != actual.scalar_type()) {
    return ::testing::AssertionFailure()
           << "dtype " << actual.scalar_type() << " != " << expected.scalar_type();
  }
  if (expected.sizes() != actual.sizes()) {
    return ::testing::AssertionFailure()
           << "shape " << actual.sizes() << " != " << expected.sizes();
  }
  if (bytes_of(expected) != bytes_of(actual))
    return ::testing::AssertionFailure() << "bytes differ";
  return ::testing::AssertionSuccess();
}

// A safetensors file from a header string and a data buffer (no padding added).
inline std::string raw_safetensors(const std::string& header, const std::string& data = "") {
  uint64_t n = header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

}  // namespace qtrain::testing

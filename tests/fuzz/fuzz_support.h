// Shared pieces of the libFuzzer targets. The contract they check: a parser given any bytes
// either succeeds or throws qtrain::Error (which the tools turn into a clear message and exit
// code). Any other exception escapes LLVMFuzzerTestOneInput, terminates the process and counts
// as a crash, as do ASan/UBSan reports, leaks and timeouts.
#pragma once

#include "core/error.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace qtrain::fuzz {

// A directory private to this fuzzing process (removed at exit), under $TMPDIR or /tmp.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string path = std::string(tmp != nullptr ? tmp : "/tmp") + "/qtrain-fuzz-" +
                       std::to_string(static_cast<long>(getpid()));
    std::filesystem::create_directories(path);
    static struct Cleanup {
      std::string path;
      ~Cleanup() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
      }
    } cleanup{path};
    return path;
  }();
  return dir;
}

// Writes `size` bytes to scratch_dir()/name and returns the path.
inline std::string write_scratch(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.flush()) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

// Runs `body`, accepting qtrain::Error as the parser's documented way to refuse input.
template <class Body>
void expect_success_or_error(Body&& body) {
  try {
    body();
  } catch (const qtrain::Error&) {
  }
}

// A broken property of an accepted input: report and abort so libFuzzer saves the input.
[[noreturn]] inline void property_failed(const std::string& what) {
  std::fprintf(stderr, "fuzz property failed: %s\n", what.c_str());
  std::abort();
}

}  // namespace qtrain::fuzz

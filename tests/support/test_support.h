// Helpers shared by the tests: scratch directories, the reference Python environment, tolerances.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace qtrain::testing {

// A fresh empty directory under the system temp dir, removed when the object dies.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag = "qtrain-test");
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string source_dir();  // the repository root
std::string binary_dir();  // the CMake build root ($QTRAIN_TEST_BINARY_DIR overrides it)

// The interpreter of the setup venv that holds the reference packages (transformers, gguf, ...),
// or "" when there is none. Tests that need it call GTEST_SKIP when it is missing, unless
// QTRAIN_REQUIRE_INTEROP=1 (set by scripts/test.sh), in which case they fail instead.
std::string reference_python();

// Runs `python script args...` (script relative to tests/reference/); returns its exit status and
// captures its stdout into `output`; its stderr goes to this test's stderr when it fails.
int run_reference_script(const std::string& script, const std::vector<std::string>& args,
                         std::string* output);

// Runs a shell command line; returns the exit status and captures stdout+stderr.
int run_command(const std::string& command_line, std::string* output);

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
int free_loopback_port();

// Max |a - b| over all elements (both converted to double).
double max_abs_diff(const at::Tensor& a, const at::Tensor& b);

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& contents);

}  // namespace qtrain::testing

// Use at the top of an interop test: skips (or fails under QTRAIN_REQUIRE_INTEROP=1) when the
// reference venv is missing.
#define QTRAIN_REQUIRE_REFERENCE_PYTHON()                                                    \
  do {                                                                                       \
    if (::qtrain::testing::reference_python().empty()) {                                     \
      if (const char* r = std::getenv("QTRAIN_REQUIRE_INTEROP"); r && std::string(r) == "1") \
        FAIL() << "reference Python venv missing (run scripts/setup.sh)";                    \
      GTEST_SKIP() << "reference Python venv missing (run scripts/setup.sh)";                \
    }                                                                                        \
  } while (0)

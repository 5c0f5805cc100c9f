#include "tests/support/test_support.h"

#include <ATen/ATen.h>

#include <arpa/inet.h>
#include <ftw.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <stdexcept>

namespace qtrain::testing {
namespace fs = std::filesystem;

ScratchDir::ScratchDir(const std::string& tag) {
  std::random_device device;
  for (int attempt = 0; attempt < 100; ++attempt) {
    fs::path candidate = fs::temp_directory_path() / (tag + "-" + std::to_string(device()));
    if (fs::create_directory(candidate)) {
      path_ = candidate.string();
      return;
    }
  }
  throw std::runtime_error("cannot create a scratch directory");
}

// Not std::filesystem::remove_all: libtorch.so exports its own copy, which calls
// recursive_directory_iterator::__erase, a weak symbol newer than the system libstdc++ (GCC 12)
// and so null: it crashes on any non-empty directory.
ScratchDir::~ScratchDir() {
  if (std::getenv("QTRAIN_KEEP_SCRATCH") != nullptr) return;
  ::nftw(
      path_.c_str(),
      [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

std::string source_dir() {
  return QTRAIN_SOURCE_DIR;
}
std::string binary_dir() {
  // A copy of the built tools elsewhere (a long test loop that must not see rebuilds).
  if (const char* dir = std::getenv("QTRAIN_TEST_BINARY_DIR"); dir && *dir) return dir;
  return QTRAIN_BINARY_DIR;
}

std::string reference_python() {
  std::string python = QTRAIN_TEST_PYTHON;
  if (const char* venv = std::getenv("QTRAIN_VENV")) python = std::string(venv) + "/bin/python3";
  return fs::exists(python) ? python : "";
}

namespace {

// Runs a shell command line and returns its exit status; stdout goes to `output`.
int capture_stdout(const std::string& shell_line, std::string* output) {
  FILE* pipe = popen(shell_line.c_str(), "r");
  if (pipe == nullptr) return -1;
  std::array<char, 4096> buffer;
  std::string captured;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) captured.append(buffer.data(), n);
  int status = pclose(pipe);
  if (output) *output = captured;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

int run_command(const std::string& command_line, std::string* output) {
  return capture_stdout(command_line + " 2>&1", output);
}

int free_loopback_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

int run_reference_script(const std::string& script, const std::vector<std::string>& args,
                         std::string* output) {
  std::ostringstream cmd;
  cmd << "'" << reference_python() << "' '" << source_dir() << "/tests/reference/" << script << "'";
  for (const auto& a : args) cmd << " '" << a << "'";
  // Libraries log warnings on stderr (bitsandbytes does on import), which must not land in the
  // JSON or text a script prints; the test's log shows them when the script fails.
  ScratchDir scratch("reference-stderr");
  const std::string stderr_path = scratch.file("stderr.txt");
  const int rc = capture_stdout(cmd.str() + " 2>'" + stderr_path + "'", output);
  if (rc != 0) {
    std::ifstream in(stderr_path, std::ios::binary);
    std::cerr << "[" << script << " exited with " << rc << "; its stderr:]\n" << in.rdbuf() << "\n";
  }
  return rc;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) throw std::runtime_error("max_abs_diff: shapes differ");
  if (a.numel() == 0) return 0.0;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace qtrain::testing

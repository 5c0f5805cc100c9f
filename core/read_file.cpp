#include "core/read_file.h"

#include "core/error.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace qtrain {
namespace {

const char* special_file_type(mode_t mode) {
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISFIFO(mode)) return "FIFO";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}

[[noreturn]] void refuse_not_regular(const std::string& path, mode_t mode,
                                     const std::string& what) {
  throw_error(ErrorKind::kIo,
              what + " is not a regular file (it is a " + special_file_type(mode) + ")",
              {.file = path});
}

[[noreturn]] void refuse_too_large(const std::string& path, uint64_t size, uint64_t max_bytes,
                                   const std::string& what, bool at_least) {
  throw_error(ErrorKind::kFormat,
              what + " is larger than " + byte_limit_text(max_bytes) + " (" +
                  (at_least ? "more than " : "") + std::to_string(size) + " bytes)",
              {.file = path});
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Reads until end of file or until more than `max_bytes` arrived (a file may grow after fstat,
// and /proc files report size 0).
std::string read_at_most(int fd, uint64_t size_hint, uint64_t max_bytes, const std::string& path,
                         const std::string& what) {
  std::string bytes;
  bytes.reserve(static_cast<size_t>(size_hint));
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n == 0) return bytes;
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_error(ErrorKind::kIo, "cannot read " + what, {.file = path});
    }
    bytes.append(buffer, static_cast<size_t>(n));
    if (bytes.size() > max_bytes) refuse_too_large(path, max_bytes, max_bytes, what, true);
  }
}

}  // namespace

std::string byte_limit_text(uint64_t bytes) {
  if (bytes >= kMiB && bytes % kMiB == 0) return std::to_string(bytes / kMiB) + " MiB";
  return std::to_string(bytes) + " bytes";
}

std::string read_small_file(const std::string& path, uint64_t max_bytes, const std::string& what) {
  // O_NONBLOCK: opening a FIFO without a writer returns at once instead of hanging.
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) throw_error(ErrorKind::kIo, "cannot open " + what, {.file = path});
  struct stat st;
  if (::fstat(fd.get(), &st) != 0)
    throw_error(ErrorKind::kIo, "cannot read " + what, {.file = path});
  if (S_ISDIR(st.st_mode)) throw_error(ErrorKind::kIo, "cannot open " + what, {.file = path});
  if (!S_ISREG(st.st_mode)) refuse_not_regular(path, st.st_mode, what);
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes) refuse_too_large(path, size, max_bytes, what, false);
  return read_at_most(fd.get(), size, max_bytes, path, what);
}

void refuse_special_file(const std::string& path, const std::string& what) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return;
  if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) refuse_not_regular(path, st.st_mode, what);
}

}  // namespace qtrain

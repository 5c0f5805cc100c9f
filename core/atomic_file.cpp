#include "core/atomic_file.h"

#include "core/error.h"
#include "core/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

namespace qtrain {
namespace {

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Process-wide, so threads writing the same target never share a temp name.
std::string next_temp_path(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

void sync_directory_of(const std::string& path) {
  int dir_fd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  // Some file systems cannot fsync a directory (EINVAL); there is nothing more to do there.
  if (dir_fd < 0 || (::fsync(dir_fd) != 0 && errno != EINVAL)) {
    log::warn("fsync of the directory of ", path, " failed: ", std::strerror(errno));
  }
  if (dir_fd >= 0) ::close(dir_fd);
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  // O_EXCL never reuses a file; a name left behind by a dead process with our pid is skipped.
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp_path_ = next_temp_path(path_);
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ >= 0 || errno != EEXIST) break;
  }
  if (fd_ < 0) {
    const int err = errno;
    fail(err, "cannot create temp file " + std::exchange(temp_path_, {}));
  }
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  if (fd_ < 0)
    throw_error(ErrorKind::kInternal, "AtomicFile written after commit()", {.file = path_});
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;  // no progress and no reason given: do not spin
      fail(err, "write failed");
    }
    p += n;
    size -= static_cast<size_t>(n);
    bytes_written_ += static_cast<uint64_t>(n);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw_error(ErrorKind::kInternal, "AtomicFile committed twice", {.file = path_});
  if (::fsync(fd_) != 0) {
    const int err = errno;
    fail(err, "fsync failed");
  }
  if (::close(std::exchange(fd_, -1)) != 0) {
    const int err = errno;
    fail(err, "close failed");
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    fail(err, "cannot rename " + temp_path_ + " into place");
  }
  temp_path_.clear();
  sync_directory_of(path_);
}

void AtomicFile::fail(int err, const std::string& what) const {
  throw_error(ErrorKind::kIo, what + ": " + std::strerror(err), {.file = path_});
}

void write_file_atomically(const std::string& path, std::string_view bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

}  // namespace qtrain

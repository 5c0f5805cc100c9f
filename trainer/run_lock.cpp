#include "trainer/run_lock.h"

#include "core/error.h"
#include "core/log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <thread>
#include <utility>

namespace qtrain {
namespace {

constexpr int kAcquireAttempts = 100;
constexpr size_t kMaxHolderBytes = 4096;

std::string lock_path(const std::string& run_dir) {
  return run_dir + "/" + kRunLockFile;
}

std::string errno_text(int error) {
  return std::strerror(error);
}

std::string host_name() {
  char host[256] = "";
  ::gethostname(host, sizeof(host) - 1);
  return host[0] != '\0' ? host : "unknown";
}

// A lock request covering the whole file.
struct flock whole_file(short type) {
  struct flock lock = {};
  lock.l_type = type;
  lock.l_whence = SEEK_SET;
  return lock;
}

// Open-file-description locks conflict between two opens of the file even in one process, and
// closing another descriptor of the file never drops them; kernels before 3.15 lack them, and
// get the classic per-process lock instead.
int lock_fcntl(int fd, int ofd_command, int classic_command, struct flock* lock) {
  int rc = ::fcntl(fd, ofd_command, lock);
  if (rc != 0 && errno == EINVAL) rc = ::fcntl(fd, classic_command, lock);
  return rc;
}

// Makes `dir` and its parents; true when this call made `dir` itself.
bool make_run_dir(const std::string& dir) {
  std::error_code ec;
  const bool made = std::filesystem::create_directories(dir, ec);
  if (ec) throw_error(ErrorKind::kIo, "cannot create directory: " + ec.message(), {.file = dir});
  return made;
}

// Whether the locked descriptor is still the file at `path`: a releasing holder unlinks the file
// while it holds the lock, so a lock won on the unlinked file guards nothing.
bool still_at(int fd, const std::string& path) {
  struct stat opened, named;
  return ::fstat(fd, &opened) == 0 && ::lstat(path.c_str(), &named) == 0 &&
         opened.st_dev == named.st_dev && opened.st_ino == named.st_ino;
}

void write_holder(int fd) {
  const std::string text = "pid " + std::to_string(::getpid()) + "\nhost " + host_name() + "\n";
  // Best effort: the lock holds without it; a refused process then reports "unknown".
  if (::ftruncate(fd, 0) != 0) return;
  const ssize_t written = ::pwrite(fd, text.data(), text.size(), 0);
  (void)written;
}

std::string read_start(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return "";
  std::string text(kMaxHolderBytes, '\0');
  const ssize_t n = ::read(fd, text.data(), text.size());
  ::close(fd);
  text.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return text;
}

bool printable_word(const std::string& word) {
  if (word.empty() || word.size() > 255) return false;
  for (unsigned char c : word) {
    if (!std::isgraph(c)) return false;
  }
  return true;
}

// "pid <n>" and "host <name>" lines; anything else is ignored.
RunLockHolder parse_holder(const std::string& text) {
  RunLockHolder holder{"unknown", "unknown"};
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string key, value;
    words >> key >> value;
    if (!printable_word(value)) continue;
    if (key == "pid" && value.find_first_not_of("0123456789") == std::string::npos) {
      holder.pid = value;
    } else if (key == "host") {
      holder.host = value;
    }
  }
  return holder;
}

RunLockHolder read_holder(const std::string& path) {
  // The holder writes itself in just after taking the lock: give it a moment.
  RunLockHolder holder;
  for (int attempt = 0; attempt < 20; ++attempt) {
    holder = parse_holder(read_start(path));
    if (holder.pid != "unknown") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return holder;
}

[[noreturn]] void throw_in_use(const std::string& run_dir, const RunLockHolder& holder) {
  throw_error(ErrorKind::kIo,
              "another qtrain process (pid " + holder.pid + " on " + holder.host +
                  ") is using this run directory; wait for it to end or stop it, or choose "
                  "another output.dir",
              {.file = run_dir, .field = "output.dir"});
}

}  // namespace

RunLock::RunLock(std::string run_dir, int fd, bool made_dir)
    : run_dir_(std::move(run_dir)), fd_(fd), made_dir_(made_dir) {}

std::unique_ptr<RunLock> RunLock::acquire(const std::string& run_dir) {
  const std::string path = lock_path(run_dir);
  bool made_dir = false;
  for (int attempt = 0; attempt < kAcquireAttempts; ++attempt) {
    made_dir = make_run_dir(run_dir) || made_dir;
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
      if (errno == ENOENT) continue;  // the directory left with its previous holder
      throw_error(ErrorKind::kIo, "cannot create the lock file: " + errno_text(errno),
                  {.file = path});
    }
    struct flock lock = whole_file(F_WRLCK);
    if (lock_fcntl(fd, F_OFD_SETLK, F_SETLK, &lock) != 0) {
      const int error = errno;
      ::close(fd);
      if (error == EAGAIN || error == EACCES) throw_in_use(run_dir, read_holder(path));
      log::warn("cannot lock ", path, " (", errno_text(error), "); another qtrain writing ",
                run_dir, " at the same time would go unnoticed");
      return std::unique_ptr<RunLock>(new RunLock(run_dir, -1, false));
    }
    if (!still_at(fd, path)) {
      ::close(fd);
      continue;
    }
    write_holder(fd);
    return std::unique_ptr<RunLock>(new RunLock(run_dir, fd, made_dir));
  }
  throw_error(ErrorKind::kIo, "cannot create the lock file: other processes keep replacing it",
              {.file = path});
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  ::unlink(lock_path(run_dir_).c_str());  // while still locked: see still_at()
  ::close(fd_);
  if (made_dir_) ::rmdir(run_dir_.c_str());  // only succeeds when the run never wrote anything
}

std::optional<RunLockHolder> run_lock_holder(const std::string& run_dir) {
  const std::string path = lock_path(run_dir);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return std::nullopt;
  struct flock lock = whole_file(F_WRLCK);
  const int rc = lock_fcntl(fd, F_OFD_GETLK, F_GETLK, &lock);
  ::close(fd);
  if (rc != 0 || lock.l_type == F_UNLCK) return std::nullopt;
  return read_holder(path);
}

}  // namespace qtrain

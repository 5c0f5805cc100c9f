// The lock that keeps a run directory (output.dir) to one qtrain process at a time: an advisory
// lock on <dir>/.qtrain.lock (fcntl open-file-description lock, also honoured over NFS), held for
// the process's lifetime and released by the kernel when it dies, so a killed run can be resumed
// at once. The holder writes its pid and host into the file; a refused process names them.
#pragma once

#include <memory>
#include <optional>
#include <string>

namespace qtrain {

inline constexpr const char* kRunLockFile = ".qtrain.lock";

// The process holding a run directory's lock, as it wrote itself into the lock file ("unknown"
// where the file does not say).
struct RunLockHolder {
  std::string pid;
  std::string host;
};

class RunLock {
 public:
  // Creates `run_dir` when missing, takes the lock and writes this process's pid and host into
  // the lock file. Throws Error(kIo) naming the directory and field output.dir, with the holder's
  // pid and host, when another process holds it; Error(kIo) when the lock file cannot be made.
  // On a file system without locks it warns and returns a guard that locks nothing.
  static std::unique_ptr<RunLock> acquire(const std::string& run_dir);

  // Removes the lock file (and the directory, when acquire() made it and it is still empty), then
  // releases the lock.
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  RunLock(std::string run_dir, int fd, bool made_dir);

  std::string run_dir_;
  int fd_ = -1;  // -1: nothing locked (no lock support)
  bool made_dir_ = false;
};

// Who holds `run_dir`'s lock, or nullopt when no process does. Only looks (takes no lock), so a
// reader such as qexport never gets in the way of a run starting.
std::optional<RunLockHolder> run_lock_holder(const std::string& run_dir);

}  // namespace qtrain

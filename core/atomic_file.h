// AtomicFile: writes a file so that readers see either its old contents or the complete new ones,
// never a half-written file. Bytes go to a temp file `<path>.tmp.<pid>.<n>` next to the target;
// commit() fsyncs it, renames it onto the target and fsyncs the directory. An AtomicFile destroyed
// without a successful commit() removes its temp file and leaves the target untouched.
//
//   AtomicFile file(path);
//   file.write(header.data(), header.size());
//   file.commit();
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qtrain {

class AtomicFile {
 public:
  // Creates the temp file. Throws Error(kIo) naming `path` (e.g. its directory is missing).
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends bytes. Throws Error(kIo) naming the target on a failed write (disk full, ...).
  void write(const void* data, size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }

  // Moves the file into place. Throws Error(kIo) if fsync, close or rename fails; a failing fsync
  // of the directory afterwards only logs a warning, since the file is already in place.
  void commit();

  const std::string& path() const { return path_; }
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  [[noreturn]] void fail(int err, const std::string& what) const;  // Error(kIo) naming path_

  std::string path_;
  std::string temp_path_;  // empty once renamed
  int fd_ = -1;
  uint64_t bytes_written_ = 0;
};

// Writes `bytes` to `path` through an AtomicFile.
void write_file_atomically(const std::string& path, std::string_view bytes);

}  // namespace qtrain

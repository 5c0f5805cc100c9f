// TensorBoard scalar event files (events.out.tfevents.*), written without TensorFlow: TFRecord
// framing (length, masked CRC-32C of the length, payload, masked CRC-32C of the payload) around
// hand-encoded Event protocol buffers { wall_time = 1, step = 2, file_version = 3, summary = 5 }.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace qtrain {

// CRC-32C (Castagnoli), and TFRecord's rotation-plus-constant mask of it.
uint32_t crc32c(const void* data, size_t size);
uint32_t masked_crc32c(const void* data, size_t size);

class TensorBoardWriter {
 public:
  // Creates `dir` if needed and opens a new events.out.tfevents.<seconds>.<host> file in it.
  // Throws Error(kIo) naming the file.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void add_scalar(const std::string& tag, double value, int64_t step);
  // Pushes buffered events to the OS (called by the trainer after each logged step).
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& payload);

  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace qtrain

#include "trainer/tensorboard_writer.h"

#include "core/error.h"

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>

namespace qtrain {
namespace {

constexpr uint32_t kCastagnoliReflected = 0x82F63B78u;

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kCastagnoliReflected : c >> 1;
    table[i] = c;
  }
  return table;
}

// Protocol-buffer wire encoding of the few field types an Event needs.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_key(std::string& out, int field, int wire_type) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | wire_type);
}

template <typename T>
void put_fixed(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
  out.append(bytes, sizeof(T));
}

void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}

double unix_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

// Event { wall_time (1, double); step (2, int64); then file_version (3) or summary (5) }.
std::string event_header(int64_t step) {
  std::string event;
  put_key(event, 1, 1);
  put_fixed<double>(event, unix_seconds());
  put_key(event, 2, 0);
  put_varint(event, static_cast<uint64_t>(step));
  return event;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    throw_error(ErrorKind::kIo, std::string("cannot create directory: ") + std::strerror(errno),
                {.file = dir});
  }
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  path_ = dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(unix_seconds())) +
          "." + host + "." + std::to_string(::getpid());
  file_ = std::fopen(path_.c_str(), "wb");
  if (file_ == nullptr) {
    throw_error(ErrorKind::kIo, std::string("cannot create: ") + std::strerror(errno),
                {.file = path_});
  }
  std::string event = event_header(0);
  put_bytes(event, 3, "brain.Event:2");
  write_record(event);
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  std::string summary_value;  // Summary.Value { tag = 1; simple_value = 2 (float) }
  put_bytes(summary_value, 1, tag);
  put_key(summary_value, 2, 5);
  put_fixed<float>(summary_value, static_cast<float>(value));
  std::string summary;  // Summary { repeated Value value = 1 }
  put_bytes(summary, 1, summary_value);
  std::string event = event_header(step);
  put_bytes(event, 5, summary);
  write_record(event);
}

void TensorBoardWriter::flush() {
  if (std::fflush(file_) != 0) {
    throw_error(ErrorKind::kIo, std::string("write failed: ") + std::strerror(errno),
                {.file = path_});
  }
}

void TensorBoardWriter::write_record(const std::string& payload) {
  std::string record;
  const uint64_t length = payload.size();
  put_fixed<uint64_t>(record, length);
  put_fixed<uint32_t>(record, masked_crc32c(&length, sizeof(length)));
  record += payload;
  put_fixed<uint32_t>(record, masked_crc32c(payload.data(), payload.size()));
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) {
    throw_error(ErrorKind::kIo, std::string("write failed: ") + std::strerror(errno),
                {.file = path_});
  }
}

}  // namespace qtrain

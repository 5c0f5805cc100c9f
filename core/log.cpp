#include "core/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace qtrain::log {
namespace {

Level level_from_env() {
  const char* value = std::getenv("QTRAIN_LOG");
  if (value == nullptr) return Level::kInfo;
  if (std::strcmp(value, "debug") == 0) return Level::kDebug;
  if (std::strcmp(value, "warn") == 0) return Level::kWarn;
  if (std::strcmp(value, "error") == 0) return Level::kError;
  return Level::kInfo;
}

std::atomic<int>& current_level() {
  static std::atomic<int> value{static_cast<int>(level_from_env())};
  return value;
}

const char* tag(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
  }
  return "?";
}

std::atomic<int> rank_prefix{-1};  // -1: not part of a multi-rank job

}  // namespace

void set_rank(int rank, int world_size) {
  rank_prefix.store(world_size > 1 ? rank : -1);
}

bool quiet_rank() {
  return rank_prefix.load() > 0 && level() > Level::kDebug;
}

Level level() {
  return static_cast<Level>(current_level().load());
}
void set_level(Level level) {
  current_level().store(static_cast<int>(level));
}

void write(Level level, const std::string& message) {
  static std::mutex mutex;
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm local{};
  localtime_r(&now, &local);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%H:%M:%S", &local);
  char rank[24] = "";
  if (const int r = rank_prefix.load(); r >= 0) std::snprintf(rank, sizeof rank, "[rank %d] ", r);
  std::lock_guard<std::mutex> lock(mutex);
  std::fprintf(stderr, "%s[%s %s] %s\n", rank, stamp, tag(level), message.c_str());
}

}  // namespace qtrain::log

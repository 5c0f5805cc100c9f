// Leveled logging to stderr. The level comes from QTRAIN_LOG (debug|info|warn|error), default info.
#pragma once

#include <sstream>
#include <string>

namespace qtrain::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

Level level();
void set_level(Level level);
void write(Level level, const std::string& message);

// Distributed runs: every line of a rank of a multi-rank job starts with "[rank N]", and ranks
// other than 0 only print warnings and errors (unless QTRAIN_LOG=debug), so a job's log reads
// like one process's.
void set_rank(int rank, int world_size);

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}
}  // namespace detail

template <typename... Args>
void debug(const Args&... args) {
  if (level() <= Level::kDebug) write(Level::kDebug, detail::concat(args...));
}
bool quiet_rank();

template <typename... Args>
void info(const Args&... args) {
  if (level() <= Level::kInfo && !quiet_rank()) write(Level::kInfo, detail::concat(args...));
}
template <typename... Args>
void warn(const Args&... args) {
  if (level() <= Level::kWarn) write(Level::kWarn, detail::concat(args...));
}
template <typename... Args>
void error(const Args&... args) {
  write(Level::kError, detail::concat(args...));
}

}  // namespace qtrain::log

// Leveled logging to stderr. The level comes from QTRAIN_LOG (debug|info|warn|error), default info.
#pragma once

#include <sstream>
#include <string>

namespace qtrain::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

Level level();
void set_level(Level level);
void write(Level level, const std::string& message);

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
template <typename... Args>
void info(const Args&... args) {
  if (level() <= Level::kInfo) write(Level::kInfo, detail::concat(args...));
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

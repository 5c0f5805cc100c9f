// Where each setting of a recipe being parsed came from (a line of the file or a command-line
// override), so that every error can point at it.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace qtrain {

class RecipeOrigins {
 public:
  explicit RecipeOrigins(std::string source) : source_(std::move(source)) {}

  const std::string& source() const { return source_; }

  // `key` is dotted ("training.lr") or a section name ("training"); line is 1-based.
  void set_line(const std::string& key, int64_t line) { origins_[key] = {line, ""}; }
  void set_override(const std::string& key, const std::string& override_text) {
    origins_[key] = {-1, override_text};
  }
  // True when the file or an override gave `key` a value (false: the default).
  bool is_explicit(const std::string& key) const { return origins_.count(key) > 0; }

  // Throws Error(kConfig) with field = `key` and the line of its value, of its section when the
  // value is a default, or the override that set it.
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

 private:
  struct Origin {
    int64_t line = -1;
    std::string override_text;
  };

  std::string source_;
  std::map<std::string, Origin> origins_;
};

}  // namespace qtrain

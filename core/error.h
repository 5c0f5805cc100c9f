// qtrain's one error type. It carries where the problem is (file, tensor, field, line) so a user
// can fix their input, and a kind that the command-line tools map to an exit code.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace qtrain {

enum class ErrorKind {
  kUsage = 2,        // bad command line
  kConfig = 3,       // recipe / config.json: unknown key, wrong type, bad value
  kIo = 4,           // missing file, permission, short read or write
  kFormat = 5,       // corrupt or malformed file (safetensors, GGUF, JSON)
  kShape = 6,        // tensor missing, extra or mis-shaped
  kUnsupported = 7,  // valid input that qtrain cannot handle (yet)
  kDiverged = 8,     // training produced a NaN/Inf loss or gradient
  kPeer = 9,         // distributed: a peer rank failed, hung or disagrees (recipe, world size)
  kInternal = 70,    // a bug in qtrain
};

struct ErrorContext {
  std::string file;
  std::string tensor;
  std::string field;
  int64_t line = -1;
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message, ErrorContext context = {});

  ErrorKind kind() const { return kind_; }
  const ErrorContext& context() const { return context_; }
  const std::string& message() const { return message_; }
  int exit_code() const { return static_cast<int>(kind_); }

  // Returns a copy with the missing context fields filled in from `outer`.
  Error with_context(const ErrorContext& outer) const;

 private:
  static std::string render(const std::string& message, const ErrorContext& context);

  ErrorKind kind_;
  std::string message_;
  ErrorContext context_;
};

const char* error_kind_name(ErrorKind kind);

// Shorthands: throw_error(ErrorKind::kFormat, "bad header", {.file = path}).
[[noreturn]] void throw_error(ErrorKind kind, const std::string& message,
                              ErrorContext context = {});

}  // namespace qtrain

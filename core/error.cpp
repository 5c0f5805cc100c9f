#include "core/error.h"

namespace qtrain {

Error::Error(ErrorKind kind, const std::string& message, ErrorContext context)
    : std::runtime_error(render(message, context)),
      kind_(kind),
      message_(message),
      context_(std::move(context)) {}

Error Error::with_context(const ErrorContext& outer) const {
  ErrorContext merged = context_;
  if (merged.file.empty()) merged.file = outer.file;
  if (merged.tensor.empty()) merged.tensor = outer.tensor;
  if (merged.field.empty()) merged.field = outer.field;
  if (merged.line < 0) merged.line = outer.line;
  return Error(kind_, message_, merged);
}

std::string Error::render(const std::string& message, const ErrorContext& context) {
  std::string where;
  if (!context.file.empty()) {
    where = context.file;
    if (context.line >= 0) where += ":" + std::to_string(context.line);
  }
  if (!context.tensor.empty())
    where += (where.empty() ? "" : ": ") + ("tensor '" + context.tensor + "'");
  if (!context.field.empty())
    where += (where.empty() ? "" : ": ") + ("field '" + context.field + "'");
  return where.empty() ? message : where + ": " + message;
}

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kUsage:
      return "usage error";
    case ErrorKind::kConfig:
      return "config error";
    case ErrorKind::kIo:
      return "I/O error";
    case ErrorKind::kFormat:
      return "format error";
    case ErrorKind::kShape:
      return "shape error";
    case ErrorKind::kUnsupported:
      return "unsupported";
    case ErrorKind::kDiverged:
      return "training diverged";
    case ErrorKind::kPeer:
      return "distributed error";
    case ErrorKind::kInternal:
      return "internal error";
  }
  return "error";
}

void throw_error(ErrorKind kind, const std::string& message, ErrorContext context) {
  throw Error(kind, message, std::move(context));
}

}  // namespace qtrain

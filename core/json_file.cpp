#include "core/json_file.h"

#include "core/error.h"

#include <fstream>
#include <sstream>

namespace qtrain {

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_error(ErrorKind::kIo, "cannot open", {.file = path});
  std::stringstream text;
  text << in.rdbuf();
  try {
    return nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    throw_error(ErrorKind::kFormat, std::string("invalid JSON: ") + e.what(), {.file = path});
  }
}

}  // namespace qtrain

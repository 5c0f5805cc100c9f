#include "models/model_dir.h"

#include "core/error.h"
#include "core/log.h"
#include "models/tiny_model.h"

#include <cstdlib>
#include <filesystem>

namespace qtrain {
namespace fs = std::filesystem;

std::string cache_root() {
  if (const char* dir = std::getenv("QTRAIN_CACHE_DIR"); dir && *dir) return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) {
    return std::string(xdg) + "/qtrain";
  }
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.cache/qtrain";
}

std::string resolve_model_dir(const std::string& path) {
  const std::string builtin = "builtin:";
  if (path.rfind(builtin, 0) == 0) {
    TinyModelOptions options;
    options.preset = path.substr(builtin.size());
    tiny_model_config(options);  // Error(kConfig) for an unknown preset, before touching disk
    const std::string dir = cache_root() + "/models/builtin-" + options.preset + "-llama-seed0";
    if (!fs::exists(dir + "/config.json")) {
      log::info("generating the built-in ", options.preset, " model into ", dir);
      std::error_code ec;
      fs::create_directories(fs::path(dir).parent_path(), ec);
      options.overwrite = true;
      write_tiny_model(options, dir);
    }
    return dir;
  }
  if (!fs::exists(path + "/config.json")) {
    throw_error(ErrorKind::kIo, "not a model directory (no config.json): " + path,
                {.field = "model.path"});
  }
  return path;
}

}  // namespace qtrain

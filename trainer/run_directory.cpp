#include "trainer/run_directory.h"

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_file.h"
#include "core/log.h"
#include "core/read_file.h"
#include "core/staging_dir.h"
#include "trainer/recipe/recipe.h"

#include <torch/version.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace qtrain {
namespace fs = std::filesystem;
namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

}  // namespace

nlohmann::json build_info() {
  nlohmann::json info;
  info["qtrain_version"] = QTRAIN_VERSION;
  info["libtorch_version"] = TORCH_VERSION;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#endif
#ifdef QTRAIN_WITH_CUDA
  info["cuda_kernels"] = true;
#else
  info["cuda_kernels"] = false;
#endif
  char host[256] = "";
  ::gethostname(host, sizeof(host) - 1);
  info["host"] = host;
  return info;
}

namespace {
bool holds_run(const std::string& dir) {
  return fs::exists(dir + "/recipe.yaml") || fs::exists(dir + "/checkpoints");
}
}  // namespace

void check_run_directory(const Recipe& recipe, RunStart start) {
  const std::string& dir = recipe.output.dir;
  if (start == RunStart::kRestart && fs::exists(dir + "/adapter") && !recipe.output.overwrite) {
    throw_error(ErrorKind::kConfig,
                "--resume: the run has finished (adapter/ is written) and has no checkpoint to "
                "continue from; pass output.overwrite=true to train it again",
                {.file = dir, .field = "output.dir"});
  }
  if (start == RunStart::kFresh && holds_run(dir) && !recipe.output.overwrite) {
    throw_error(ErrorKind::kConfig,
                "the output directory already holds a run; pass --resume to continue it or "
                "output.overwrite=true to replace it",
                {.file = dir, .field = "output.dir"});
  }
}

void prepare_run_directory(const Recipe& recipe, RunStart start,
                           const std::vector<std::string>& command_line) {
  const std::string dir = recipe.output.dir;
  const std::string recipe_path = dir + "/recipe.yaml";
  check_run_directory(recipe, start);
  if (start != RunStart::kResume && holds_run(dir)) {
    // Only what a run writes goes; anything else the user keeps in the directory stays.
    log::warn(start == RunStart::kRestart ? "--resume: no checkpoint was written; starting over in "
                                          : "output.overwrite: removing the previous run in ",
              dir);
    for (const char* entry : {"recipe.yaml", "recipe.resumed.yaml", "run_info.json",
                              "metrics.jsonl", "tensorboard", "checkpoints", "adapter", "export"}) {
      remove_tree(fs::path(dir) / entry);
    }
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw_error(ErrorKind::kIo, "cannot create directory: " + ec.message(), {.file = dir});

  const std::string resolved = recipe_to_yaml(recipe);
  if (start == RunStart::kResume && fs::exists(recipe_path)) {
    if (read_text(recipe_path) != resolved) {
      log::warn(
          "the recipe differs from the run's recipe.yaml; the resumed steps follow the new "
          "one (saved as recipe.resumed.yaml)");
      write_file_atomically(dir + "/recipe.resumed.yaml", resolved);
    }
  } else {
    write_file_atomically(recipe_path, resolved);
  }

  nlohmann::json info = build_info();
  info["seed"] = recipe.training.seed;
  info["recipe_source"] = recipe.source;
  info["overrides"] = recipe.overrides;
  info["command_line"] = command_line;
  info[start == RunStart::kResume ? "resumed_at" : "started_at"] = utc_now();
  const std::string info_path = dir + "/run_info.json";
  if (start == RunStart::kResume && fs::exists(info_path)) {
    try {
      nlohmann::json previous =
          parse_json_text(read_small_file(info_path, kMaxConfigJsonBytes, "run info"), info_path);
      previous["resumes"].push_back(info);
      info = previous;
    } catch (const nlohmann::json::exception&) {
      log::warn("run_info.json is unreadable; writing a new one");
    } catch (const Error& e) {  // too large, not a file, nested too deep, a key given twice
      log::warn("run_info.json is unreadable (", e.what(), "); writing a new one");
    }
  }
  write_file_atomically(info_path, info.dump(2) + "\n");
}

MetricsLog::MetricsLog(const std::string& run_dir, int64_t keep_through_step)
    : path_(run_dir + "/metrics.jsonl") {
  if (fs::exists(path_)) {
    std::ifstream in(path_);
    std::string line, kept;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      try {
        if (parse_json_text(line, path_).value("step", int64_t{0}) > keep_through_step) continue;
      } catch (const nlohmann::json::exception&) {
        continue;  // a line cut short by a kill
      } catch (const Error&) {
        continue;  // not a line qtrain wrote
      }
      kept += line + "\n";
    }
    write_file_atomically(path_, kept);
  }
  file_ = std::fopen(path_.c_str(), "a");
  if (file_ == nullptr) {
    throw_error(ErrorKind::kIo, std::string("cannot open: ") + std::strerror(errno),
                {.file = path_});
  }
}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::append(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    throw_error(ErrorKind::kIo, std::string("write failed: ") + std::strerror(errno),
                {.file = path_});
  }
}

}  // namespace qtrain

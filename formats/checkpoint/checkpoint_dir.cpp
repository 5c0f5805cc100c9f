#include "formats/checkpoint/checkpoint_dir.h"

#include "core/error.h"
#include "core/log.h"
#include "core/staging_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>

namespace qtrain {
namespace fs = std::filesystem;
namespace {

// QTRAIN_CHECKPOINT_TEST_DELAY_MS (tests only): a pause between the file-system steps of
// replacing and pruning checkpoints, so that the crash-safety test's kills land inside them.
void test_delay() {
  static const int ms = [] {
    const char* value = std::getenv("QTRAIN_CHECKPOINT_TEST_DELAY_MS");
    return value ? std::atoi(value) : 0;
  }();
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::string pid_tag() {
  return "-" + std::to_string(::getpid()) + "-";
}

// A fresh hidden name beside `dir` for a directory on its way out.
fs::path trash_name(const fs::path& dir) {
  std::random_device random;
  return dir.parent_path() /
         (".trash-" + dir.filename().string() + pid_tag() + std::to_string(random()));
}

[[noreturn]] void throw_rename_error(const fs::path& target, int error) {
  throw_error(ErrorKind::kIo, std::string("cannot rename: ") + std::strerror(error),
              {.file = target.string()});
}

// Renames `dir` to a trash name, then removes it: `dir` vanishes whole or stays whole.
void discard_dir(const fs::path& dir) {
  const fs::path trash = trash_name(dir);
  if (::rename(dir.c_str(), trash.c_str()) != 0) throw_rename_error(dir, errno);
  test_delay();
  remove_tree(trash);
}

// Swaps two existing directories in one step (Linux renameat2). False when the file system does
// not support the exchange.
bool exchange_dirs(const fs::path& a, const fs::path& b) {
  if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0) return true;
  if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) return false;
  throw_rename_error(b, errno);
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return name;
}

bool is_checkpoint_dir_name(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() < 13 || name.size() > 24) return false;
  return std::all_of(name.begin() + 5, name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::optional<std::string> missing_checkpoint_file(const fs::path& dir) {
  for (const char* file : kCheckpointFiles) {
    std::error_code ec;
    if (!fs::is_regular_file(dir / file, ec)) return std::string(file);
  }
  return std::nullopt;
}

std::vector<std::string> complete_checkpoint_names(const fs::path& root) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (!is_checkpoint_dir_name(name) || !entry.is_directory(ec)) continue;
    if (auto missing = missing_checkpoint_file(entry.path())) {
      log::warn("skipping the incomplete checkpoint ", entry.path().string(), " (no ", *missing,
                ")");
      continue;
    }
    names.push_back(name);
  }
  // Equal-length names sort by step; longer names (steps past 10^8) come later.
  std::sort(names.begin(), names.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() < b.size() : a < b;
  });
  return names;
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::ifstream in(root / "latest");
  std::string name;
  if (in && std::getline(in, name) && !name.empty()) {
    if (!is_checkpoint_dir_name(name)) {
      log::warn((root / "latest").string(), " names '", name,
                "', not a checkpoint of this run; using the newest complete checkpoint");
    } else if (!fs::is_directory(root / name)) {
      log::warn((root / "latest").string(), " names ", name,
                ", which does not exist; using the newest complete checkpoint");
    } else if (auto missing = missing_checkpoint_file(root / name)) {
      log::warn((root / "latest").string(), " names ", name, ", which is incomplete (no ", *missing,
                "); using the newest complete checkpoint");
    } else {
      return (root / name).string();
    }
  }
  const std::vector<std::string> names = complete_checkpoint_names(root);
  if (names.empty()) return std::nullopt;
  return (root / names.back()).string();
}

void install_checkpoint_dir(const fs::path& staging, const fs::path& target) {
  std::error_code ec;
  if (fs::exists(target, ec)) {
    // A re-save of the same step: swap, so `target` is the new checkpoint in one step; the old
    // one is then under the staging name, which a kill leaves for remove_stale_checkpoint_temps.
    if (exchange_dirs(staging, target)) {
      test_delay();
      fsync_dir(target.parent_path());
      remove_tree(staging);
      return;
    }
    // No exchange on this file system: the old directory goes to the trash first, and for a
    // moment no `target` exists (readers then take the newest complete checkpoint).
    const fs::path trash = trash_name(target);
    if (::rename(target.c_str(), trash.c_str()) != 0) throw_rename_error(target, errno);
    test_delay();
    if (::rename(staging.c_str(), target.c_str()) != 0) throw_rename_error(target, errno);
    fsync_dir(target.parent_path());
    remove_tree(trash);
    return;
  }
  if (::rename(staging.c_str(), target.c_str()) != 0) throw_rename_error(target, errno);
  fsync_dir(target.parent_path());
  test_delay();  // the moment before `latest` names the new checkpoint
}

void prune_checkpoints(const fs::path& root, int64_t keep_last, const std::string& keep) {
  const std::vector<std::string> names = complete_checkpoint_names(root);
  const int64_t excess = static_cast<int64_t>(names.size()) - std::max<int64_t>(keep_last, 1);
  for (int64_t i = 0; i < excess; ++i) {
    if (names[i] == keep) continue;
    test_delay();
    discard_dir(root / names[i]);
  }
}

void remove_stale_checkpoint_temps(const fs::path& root) {
  const std::string own = pid_tag();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    const bool staging = name.rfind(".step-", 0) == 0 && name.find(".tmp-") != std::string::npos;
    const bool trash = name.rfind(".trash-", 0) == 0;
    if ((staging || trash) && name.find(own) == std::string::npos) remove_tree(entry.path());
  }
}

}  // namespace qtrain

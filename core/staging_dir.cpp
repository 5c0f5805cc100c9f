#include "core/staging_dir.h"

#include "core/error.h"

#include <ftw.h>
#include <unistd.h>

#include <cstdio>
#include <random>
#include <string>

namespace qtrain {

void remove_tree(const std::filesystem::path& path) {
  ::nftw(
      path.c_str(),
      [](const char* entry, const struct stat*, int, struct FTW*) { return ::remove(entry); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

std::filesystem::path make_staging_dir(const std::filesystem::path& target) {
  std::random_device random;
  for (int attempt = 0; attempt < 100; ++attempt) {
    const std::filesystem::path candidate =
        target.parent_path() / ("." + target.filename().string() + ".tmp-" +
                                std::to_string(::getpid()) + "-" + std::to_string(random()));
    std::error_code ec;
    if (std::filesystem::create_directory(candidate, ec)) return candidate;
    if (ec) {
      throw_error(ErrorKind::kIo,
                  "cannot create a temporary directory next to the output: " + ec.message(),
                  {.file = target.string()});
    }
  }
  throw_error(ErrorKind::kIo, "cannot create a temporary directory next to the output",
              {.file = target.string()});
}

}  // namespace qtrain

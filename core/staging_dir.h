// Directories that appear complete or not at all: build the output in a staging directory next
// to the target, then rename it into place; remove the staging directory on failure.
#pragma once

#include <filesystem>

namespace qtrain {

// Removes `path` and everything below it. Not std::filesystem::remove_all: the copy that the torch
// wheel's libtorch.so exports calls a libstdc++ symbol newer than the system's and crashes on
// non-empty directories.
void remove_tree(const std::filesystem::path& path);

// Creates an empty, uniquely named hidden directory beside `target` (same filesystem, so a rename
// is atomic). Throws Error(kIo) naming `target` when none can be made.
std::filesystem::path make_staging_dir(const std::filesystem::path& target);

}  // namespace qtrain

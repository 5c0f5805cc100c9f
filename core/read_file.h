// Whole-file reads with a size cap: a recipe, a config, a tokenizer or a dataset that is a huge
// file, or a symlink to /dev/zero, is refused with an error naming it instead of being read until
// memory runs out.
#pragma once

#include <cstdint>
#include <string>

namespace qtrain {

// Caps by kind of file, far above any real one.
inline constexpr uint64_t kMiB = uint64_t{1} << 20;
inline constexpr uint64_t kMaxRecipeBytes = 1 * kMiB;
inline constexpr uint64_t kMaxConfigJsonBytes = 16 * kMiB;  // config.json, adapter_config.json, ...
inline constexpr uint64_t kMaxTokenizerJsonBytes = 256 * kMiB;
inline constexpr uint64_t kMaxSentencePieceBytes = 64 * kMiB;
inline constexpr uint64_t kMaxDatasetFileBytes = 4096 * kMiB;  // a .json or .txt dataset file

// The whole of the regular file `path`, refused when it holds more than `max_bytes`. `what`
// names the kind of file in the messages ("recipe", "dataset file"). Throws Error naming `path`:
// kIo "cannot open <what>" when it cannot be opened or is a directory, kIo "<what> is not a
// regular file (it is a <type>)" for a device, FIFO or socket (never blocks on a FIFO), kFormat
// "<what> is larger than <limit> (<n> bytes)", kIo "cannot read <what>" on a read error.
std::string read_small_file(const std::string& path, uint64_t max_bytes, const std::string& what);

// For files read as a stream: throws the "not a regular file" error above when `path` is a
// device, FIFO or socket (following symlinks). A missing path or a directory passes, so that the
// caller's own open reports it as before.
void refuse_special_file(const std::string& path, const std::string& what);

// "1 MiB", "256 MiB", or "<n> bytes" for a limit that is not a whole number of MiB.
std::string byte_limit_text(uint64_t bytes);

}  // namespace qtrain

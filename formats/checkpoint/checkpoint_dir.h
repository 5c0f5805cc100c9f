// The layout of a run's train-state checkpoints, and every change to it made crash-consistent:
// at every instant, a directory named `step-N` is complete (all of kCheckpointFiles).
//
//   <run>/checkpoints/step-00000040/        one checkpoint (files: kCheckpointFiles)
//   <run>/checkpoints/latest                name of the newest checkpoint, one line
//   <run>/checkpoints/.step-N.tmp-PID-R     a checkpoint being written (staging)
//   <run>/checkpoints/.trash-step-N-PID-R   a checkpoint being removed (pruned or replaced)
//
// A checkpoint is written into a staging directory and renamed into place; a re-saved step is
// swapped with its old directory in one rename (RENAME_EXCHANGE); a pruned one is renamed to a
// trash name before it is removed. A kill at any moment leaves hidden staging or trash
// directories, which the next writer removes, and complete `step-N` directories.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

// The files every checkpoint directory holds.
inline constexpr std::array<const char*, 5> kCheckpointFiles = {
    "adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "rng.safetensors",
    "trainer_state.json"};

// "step-00000040".
std::string checkpoint_dir_name(int64_t step);

// Whether `name` is spelled like a checkpoint directory: "step-" and eight or more digits.
bool is_checkpoint_dir_name(const std::string& name);

// The first of kCheckpointFiles that `dir` lacks (or that is not a regular file), or nullopt when
// the directory is complete.
std::optional<std::string> missing_checkpoint_file(const std::filesystem::path& dir);

// The complete checkpoint directories under `root` (<run>/checkpoints), oldest first. An
// incomplete `step-N` (written by a qtrain without crash-consistent pruning, or damaged by hand)
// is skipped with a warning naming the file it lacks.
std::vector<std::string> complete_checkpoint_names(const std::filesystem::path& root);

// The checkpoint a resume or an export takes: the one `latest` names when that is a complete
// checkpoint directory of this run, else (with a warning saying why) the newest complete one;
// nullopt when there is none.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);

// Moves the complete directory `staging` to `target` (a sibling): a plain rename when `target`
// does not exist, else an atomic exchange followed by the removal of the old directory, so
// `target` is complete at every instant. Throws Error(kIo) naming `target`.
void install_checkpoint_dir(const std::filesystem::path& staging,
                            const std::filesystem::path& target);

// Removes the complete checkpoints under `root` beyond the newest `keep_last` (at least one),
// never `keep`; each is renamed to a trash name first.
void prune_checkpoints(const std::filesystem::path& root, int64_t keep_last,
                       const std::string& keep);

// Removes staging and trash directories under `root` that other processes left behind (a kill
// while writing or removing a checkpoint). One process writes a run's checkpoints at a time.
void remove_stale_checkpoint_temps(const std::filesystem::path& root);

}  // namespace qtrain

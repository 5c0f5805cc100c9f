// The run directory of a training job, everything needed to understand and reproduce it:
//
//   recipe.yaml      the fully resolved recipe (defaults and overrides applied)
//   run_info.json    seed, qtrain version, build (compiler, LibTorch, CUDA), host, command line
//   metrics.jsonl    one JSON object per logged step and per evaluation
//   tensorboard/     TensorBoard scalars (trainer/tensorboard_writer.h)
//   checkpoints/     train-state checkpoints (trainer/train_checkpoint.h)
//   adapter/         the final adapter, as HF PEFT loads it
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace qtrain {

struct Recipe;

// kRestart: --resume found no checkpoint in a run that never wrote one (stopped or killed before
// its first save, e.g. a requeued batch job); the run's own files are replaced as by a fresh run
// with output.overwrite. A finished run (it has adapter/) is never restarted this way.
enum class RunStart { kFresh, kResume, kRestart };

// Fails fast, before anything is loaded, when a fresh run would land in a directory that already
// holds one (Error(kConfig) saying to pass --resume or output.overwrite=true). Writes nothing.
void check_run_directory(const Recipe& recipe, RunStart start);

// Makes `recipe.output.dir` ready once the model and data have loaded, so a run that fails to
// start leaves no half-made run behind. Fresh: checks as above, or empties the directory first
// when output.overwrite is set. Writes recipe.yaml (fresh only; on resume a differing recipe is
// logged as a warning and kept beside it as recipe.resumed.yaml) and run_info.json.
void prepare_run_directory(const Recipe& recipe, RunStart start,
                           const std::vector<std::string>& command_line);

// Appends JSON lines to <run>/metrics.jsonl, flushed per line so a killed run keeps them.
class MetricsLog {
 public:
  // On resume, lines whose "step" is greater than `keep_through_step` (written after the
  // checkpoint the run continues from) are dropped first, so the file reads as one run.
  MetricsLog(const std::string& run_dir, int64_t keep_through_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  void append(const nlohmann::json& record);

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Build and version facts for run_info.json.
nlohmann::json build_info();

}  // namespace qtrain

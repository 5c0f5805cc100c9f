// The training loop a recipe drives: load the quantized base and attach adapters, tokenize the
// data, then optimizer steps of grad_accum_steps micro-batches each, with clipping, scheduling,
// held-out evaluation, metrics, checkpoints, resume and clean stops on SIGTERM/SIGINT.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace qtrain {

struct Recipe;
class RunLock;

struct TrainOptions {
  bool resume = false;  // continue from the run directory's newest checkpoint
  std::vector<std::string> command_line;
  // Stop (as if signalled) once this optimizer step is done; for tests of interruption.
  int64_t stop_after_step = 0;
};

struct TrainResult {
  int64_t steps_done = 0;  // optimizer steps completed in the run (including resumed ones)
  int64_t total_steps = 0;
  double last_loss = 0;
  double first_eval_loss = 0, last_eval_loss = 0;  // 0 when the run had no evaluation
  // Preference objectives: held-out reward accuracy at step 0 and at the last evaluation.
  double first_eval_reward_accuracy = 0, last_eval_reward_accuracy = 0;
  int64_t skipped_steps = 0;  // non-finite steps skipped
  bool interrupted = false;   // stopped by a signal after a checkpoint
  std::string run_dir;
  int rank = 0;  // this process's rank; only rank 0 writes the run directory
  int world_size = 1;
  // Rank 0's lock on the run directory (trainer/run_lock.h), held for as long as the result
  // lives, so that what follows the training (output.export) still runs under it.
  std::shared_ptr<RunLock> run_lock;
};

// Under a distributed launch (trainer/distributed/launch_env.h) this process is one data-parallel
// rank: it trains on its shard and rank 0 writes the run directory.
// Throws qtrain::Error for bad input (see the recipe, data and model loaders),
// Error(kDiverged) for a non-finite loss or gradient with training.on_nonfinite = stop, and
// Error(kPeer) when a peer rank fails, hangs or disagrees.
TrainResult train(const Recipe& recipe, const TrainOptions& options);

}  // namespace qtrain

// The training loop's view of data parallelism. A single process is a world of one without a
// process group, and every call below is then a no-op or the identity, so the loop has one path.
//
// What the ranks share: the recipe (checked by hash when they join), the checkpoint to resume
// from (rank 0 decides), the adapter's initial values (rank 0's, broadcast), and every step's
// token counts, loss, gradients and stop decision. What each rank keeps: its shard of the data and
// its random state (rank 0's checkpoint stores every rank's).
#pragma once

#include "trainer/distributed/launch_env.h"

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace qtrain {

struct Recipe;
class ProcessGroup;
class GradReducer;

class DataParallel {
 public:
  DataParallel();  // a single process
  ~DataParallel();
  DataParallel(DataParallel&&) noexcept;
  DataParallel& operator=(DataParallel&&) noexcept;

  // Joins the job the environment describes (launch_env()), if any, and checks that every rank
  // runs the same recipe with the same --resume. Error(kConfig) for distributed.backend none
  // under a multi-rank launch; Error(kPeer) when the ranks disagree or cannot meet.
  static DataParallel join(const Recipe& recipe, const LaunchEnv& env, bool resume);

  bool active() const { return group_ != nullptr; }
  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }

  // model.device as this rank uses it (launch_env.h device_for_rank).
  std::string device_for_rank(const std::string& recipe_device) const;

  // Rank 0's value, on every rank (a path, a decision).
  std::string from_main(const std::string& key, const std::string& value);
  void sum(std::vector<double>& values);
  bool any(bool flag);
  void barrier();
  // Rank 0's values into every rank's tensors (in place).
  void broadcast(const std::vector<at::Tensor>& tensors);

  // Starts gradient synchronisation for `params` (after they exist and before training).
  void attach(const std::vector<at::Tensor>& params, int64_t bucket_mb);
  GradReducer* reducer() { return reducer_.get(); }
  // The collectives behind this rank (null for a single process).
  ProcessGroup* process_group() { return group_.get(); }

  // Checkpoints: rank 0 receives every rank's generator states as "rank<N>/<device>" entries
  // (its own stay unprefixed); on resume each rank takes its own back.
  void gather_rng_states(std::map<std::string, at::Tensor>& states, int64_t step);
  std::map<std::string, at::Tensor> own_rng_states(
      const std::map<std::string, at::Tensor>& saved) const;

 private:
  LaunchEnv env_;
  std::unique_ptr<ProcessGroup> group_;
  std::unique_ptr<GradReducer> reducer_;
  int64_t shared_keys_ = 0;
};

// core/text.h fnv1a_64 of `text` as 16 hex digits (the recipe hash the ranks compare).
std::string text_hash(const std::string& text);

}  // namespace qtrain

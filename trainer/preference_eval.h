// Preference pairs outside the training step: held-out evaluation of the objective, and the
// reference log-probabilities computed once (training.precompute_ref_log_probs).
#pragma once

#include "data/examples.h"
#include "trainer/preference_loss.h"

#include <cstdint>
#include <vector>

namespace qtrain {

class CausalLM;

struct PreferenceEvalSums {
  double loss_sum = 0;
  int64_t pairs = 0;
  std::vector<double> metric_sums;  // preference_metric_names(objective) order
};

// Runs the pairs (chosen[i], rejected[i]) in order, `micro_batch_size` pairs at a time, in eval
// mode without gradients, at most `max_batches` batches (0: all); shard s of n takes batches s,
// s + n, ... (their sums add up over the shards); with `lockstep` every shard runs as many forward
// passes (the sharded base's forward passes are collectives). Puts the model back in training
// mode.
PreferenceEvalSums evaluate_preference(CausalLM& model, const std::vector<Example>& chosen,
                                       const std::vector<Example>& rejected,
                                       int64_t micro_batch_size, int64_t max_seq_len,
                                       int64_t pad_id, int64_t max_batches,
                                       const PreferenceOptions& options, int64_t shard = 0,
                                       int64_t num_shards = 1, bool lockstep = false);

// The reference log-probabilities (adapters off) of every pair: [2][n], chosen then rejected,
// summed over each response. Every caller computes all of them (same forward passes everywhere).
std::vector<std::vector<double>> reference_log_probs_of(
    CausalLM& model, const std::vector<Example>& chosen, const std::vector<Example>& rejected,
    int64_t micro_batch_size, int64_t max_seq_len, int64_t pad_id, int64_t chunk_tokens);

}  // namespace qtrain

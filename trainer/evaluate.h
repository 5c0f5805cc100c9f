// Held-out evaluation: the mean next-token loss over every loss-carrying token, and perplexity.
#pragma once

#include "data/examples.h"

#include <cstdint>
#include <vector>

namespace qtrain {

class CausalLM;

struct EvalResult {
  double loss = 0;        // mean over loss tokens
  double perplexity = 0;  // exp(loss)
  int64_t tokens = 0;     // loss tokens evaluated
  double loss_sum = 0;    // summed token losses (loss = loss_sum / tokens)
};

// Runs the examples in their order, `micro_batch_size` at a time, in eval mode without
// gradients, at most `max_batches` batches (0: all), then puts the model back in training mode.
// Data parallel: shard s of n evaluates batches s, s + n, ... of that sequence, so the ranks'
// loss_sum and tokens add up to one process's. The loss runs lm_head over `loss_chunk_tokens`
// loss tokens at a time (trainer/chunked_loss.h; 0: all at once; the recipe's
// training.loss_chunk_tokens), so no batch's full-vocabulary logits exist. With `lockstep`, every
// shard runs as many forward passes (a shard short of one runs another's batch and discards it),
// as the sharded base needs: its forward passes gather weights, collectives all ranks must join.
EvalResult evaluate(CausalLM& model, const std::vector<Example>& examples, int64_t micro_batch_size,
                    int64_t max_seq_len, int64_t pad_id, int64_t max_batches, int64_t shard = 0,
                    int64_t num_shards = 1, int64_t loss_chunk_tokens = 1024,
                    bool lockstep = false);

}  // namespace qtrain

// Examples -> micro-batches, in a shuffled order that is reproducible from (seed, epoch) and
// resumable from a two-number cursor.
//
// Padding mode: one example per row, padded on the right to the longest example of the batch (T
// is that length, not seq_len). Right padding under causal attention needs no mask: real tokens
// never look right.
// Packing mode: rows of exactly seq_len tokens, filled first-fit with whole examples in the
// epoch's order: each example goes into the oldest of up to kPackingOpenRows open rows it fits
// (a new row when none has room; the oldest is closed, its tail padded, when the window is
// full). A row is handed out when it closes: exactly full, evicted, or at the epoch's end.
// An example is never split. Positions restart at 0 for each example and segment ids (or the
// same boundaries as cu_seqlens, for variable-length attention) keep the examples of a row from
// attending to each other (models/attention_mask.h, models/varlen_attention.h).
//
// Every tensor of a Batch lives on the CPU; the trainer copies them to its device.
//
// Every epoch visits every example exactly once; the last batch of an epoch may have fewer rows.
// In packing mode the number of rows, and so of batches, follows each epoch's order.
#pragma once

#include "data/examples.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace qtrain {

struct Batch {
  at::Tensor input_ids;     // [B, T] int64; padding = BatchOptions::pad_id
  at::Tensor labels;        // [B, T] int64; kIgnoreLabel (-100) on prompts and padding
  at::Tensor position_ids;  // [B, T] int64; 0, 1, ... from the start of each example
  // [B, T] int64 in packing mode: 0, 1, 2, ... for the examples of each row, the padding tail one
  // more id of its own; undefined in padding mode (plain causal attention suffices).
  at::Tensor segment_ids;
  // Packing mode only: the segments of the flattened [B*T] token stream, rows concatenated; the
  // same boundaries as segment_ids (each example a segment, a row's padding tail one more).
  // int32 [S + 1] cumulative lengths, from 0 to B*T, and the longest segment.
  at::Tensor cu_seqlens;
  int64_t max_seqlen = 0;
  int64_t tokens = 0;                // non-padding tokens
  int64_t loss_tokens = 0;           // labels != -100
  int64_t samples = 0;               // examples in the batch
  std::vector<int64_t> example_ids;  // indices into the batcher's examples, row by row
  // Paired batchers (preference pairs): the rows are [the P examples..., their P partners...]
  // in the same order (example_ids lists the first half); 0 otherwise.
  int64_t pairs = 0;
  std::vector<int64_t> row_lengths;  // each row's tokens before its padding
};

// Open rows first-fit packing considers; bounds its cost at O(examples * kPackingOpenRows).
constexpr int64_t kPackingOpenRows = 64;

struct BatchOptions {
  int64_t micro_batch_size = 1;
  int64_t seq_len = 2048;  // packing: the row length; both modes: the longest example allowed
  bool packing = false;
  uint64_t seed = 0;
  bool shuffle = true;  // false: the examples' own order every epoch
  int64_t pad_id = 0;   // padding_id(tokenizer)
  // Data-parallel sharding: this batcher hands out rows shard, shard + num_shards, ... of the
  // epoch's rows. The row list is first padded, by repeating its first rows, to a multiple of
  // num_shards, so every shard has the same number of batches (as torch's DistributedSampler
  // pads). All shards must share seed, seq_len and packing.
  int64_t num_shards = 1;
  int64_t shard = 0;
};

// Where the batcher stands: `position` batches of epoch `epoch` have been handed out.
struct DataCursor {
  int64_t epoch = 0;
  int64_t position = 0;
};

class Batcher {
 public:
  // Throws Error(kConfig) for no examples, a micro_batch_size or seq_len below 1, an example
  // longer than seq_len, or a shard outside [0, num_shards).
  // With `partners` (one per example: a preference pair's rejected side), every batch carries
  // each example's partner too, in a second block of rows (Batch::pairs); padding mode only.
  Batcher(std::vector<Example> examples, BatchOptions options, std::vector<Example> partners = {});

  // The next batch; after the epoch's last batch the next epoch starts with a new order.
  Batch next();

  DataCursor cursor() const { return cursor_; }
  // Continues from `cursor` as if the batches before it had been taken. Throws Error(kConfig)
  // when it lies outside the data (the dataset or batch settings changed since it was saved).
  void restore(const DataCursor& cursor);

  int64_t batches_per_epoch() const;  // of the current epoch
  int64_t num_examples() const { return static_cast<int64_t>(examples_.size()); }
  const Example& example(int64_t id) const { return examples_.at(id); }
  const BatchOptions& options() const { return options_; }

 private:
  // A row: `count` examples starting at `start` in the epoch's order.
  struct Row {
    int64_t start;
    int64_t count;
  };
  void plan_epoch(int64_t epoch);
  void pack_rows(int64_t n);  // rows_ from order_, which it rewrites row by row
  void keep_shard_rows();     // rows_ -> this shard's rows
  Batch build(int64_t first_row, int64_t rows) const;

  std::vector<Example> examples_;
  std::vector<Example> partners_;  // empty, or one per example
  BatchOptions options_;
  DataCursor cursor_;
  int64_t planned_epoch_ = -1;
  std::vector<int64_t> order_;  // example indices in the epoch's order
  std::vector<Row> rows_;
};

}  // namespace qtrain

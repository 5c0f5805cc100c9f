#include "data/batcher.h"

#include "core/error.h"
#include "data/shuffle.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <vector>

namespace qtrain {

Batcher::Batcher(std::vector<Example> examples, BatchOptions options, std::vector<Example> partners)
    : examples_(std::move(examples)), partners_(std::move(partners)), options_(options) {
  if (examples_.empty()) throw_error(ErrorKind::kConfig, "no examples to batch");
  if (!partners_.empty() && (partners_.size() != examples_.size() || options_.packing)) {
    throw_error(ErrorKind::kConfig,
                "paired examples need one partner per example and padding mode (no packing)");
  }
  if (options_.micro_batch_size < 1 || options_.seq_len < 1) {
    throw_error(ErrorKind::kConfig, "micro_batch_size and seq_len must be at least 1, got " +
                                        std::to_string(options_.micro_batch_size) + " and " +
                                        std::to_string(options_.seq_len));
  }
  if (options_.num_shards < 1 || options_.shard < 0 || options_.shard >= options_.num_shards) {
    throw_error(ErrorKind::kConfig, "shard " + std::to_string(options_.shard) + " of " +
                                        std::to_string(options_.num_shards) +
                                        " shards does not exist");
  }
  for (size_t i = 0; i < examples_.size() + partners_.size(); ++i) {
    const Example& example = i < examples_.size() ? examples_[i] : partners_[i - examples_.size()];
    const auto length = static_cast<int64_t>(example.ids.size());
    if (length < 1 || length > options_.seq_len || example.labels.size() != example.ids.size()) {
      throw_error(ErrorKind::kConfig,
                  "example " + std::to_string(i) + " has " + std::to_string(length) +
                      " tokens (and " + std::to_string(example.labels.size()) +
                      " labels); batches take 1 to seq_len = " + std::to_string(options_.seq_len) +
                      " (build examples with max_seq_len <= seq_len)");
    }
  }
  plan_epoch(0);
}

void Batcher::plan_epoch(int64_t epoch) {
  const auto n = static_cast<int64_t>(examples_.size());
  if (options_.shuffle) {
    order_ = shuffled_indices(n, mix_seed(options_.seed, static_cast<uint64_t>(epoch)));
  } else {
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), int64_t{0});
  }
  rows_.clear();
  if (!options_.packing) {
    for (int64_t i = 0; i < n; ++i) rows_.push_back({i, 1});
  } else {
    pack_rows(n);
  }
  if (options_.num_shards > 1) keep_shard_rows();
  planned_epoch_ = epoch;
}

void Batcher::pack_rows(int64_t n) {
  struct OpenRow {
    std::vector<int64_t> members;  // example indices
    int64_t tokens = 0;
  };
  std::vector<int64_t> packed_order;
  packed_order.reserve(n);
  auto emit = [&](const OpenRow& row) {
    rows_.push_back(
        {static_cast<int64_t>(packed_order.size()), static_cast<int64_t>(row.members.size())});
    packed_order.insert(packed_order.end(), row.members.begin(), row.members.end());
  };
  std::vector<OpenRow> open;  // oldest first
  for (int64_t i = 0; i < n; ++i) {
    const int64_t example = order_[i];
    const auto length = static_cast<int64_t>(examples_[example].ids.size());
    auto fits = std::find_if(open.begin(), open.end(), [&](const OpenRow& row) {
      return row.tokens + length <= options_.seq_len;
    });
    if (fits == open.end()) {
      if (static_cast<int64_t>(open.size()) == kPackingOpenRows) {
        emit(open.front());
        open.erase(open.begin());
      }
      open.emplace_back();
      fits = open.end() - 1;
    }
    fits->members.push_back(example);
    fits->tokens += length;
    if (fits->tokens == options_.seq_len) {
      emit(*fits);
      open.erase(fits);
    }
  }
  for (const OpenRow& row : open) emit(row);
  order_ = std::move(packed_order);
}

void Batcher::keep_shard_rows() {
  const int64_t shards = options_.num_shards;
  const auto rows = static_cast<int64_t>(rows_.size());
  const int64_t padded = (rows + shards - 1) / shards * shards;
  std::vector<Row> mine;
  for (int64_t r = options_.shard; r < padded; r += shards) mine.push_back(rows_[r % rows]);
  rows_ = std::move(mine);
}

int64_t Batcher::batches_per_epoch() const {
  const auto rows = static_cast<int64_t>(rows_.size());
  return (rows + options_.micro_batch_size - 1) / options_.micro_batch_size;
}

void Batcher::restore(const DataCursor& cursor) {
  if (cursor.epoch < 0 || cursor.position < 0) {
    throw_error(ErrorKind::kConfig, "data cursor (epoch " + std::to_string(cursor.epoch) +
                                        ", batch " + std::to_string(cursor.position) +
                                        ") is negative");
  }
  plan_epoch(cursor.epoch);
  if (cursor.position > batches_per_epoch()) {
    const int64_t available = batches_per_epoch();
    plan_epoch(cursor_.epoch);  // leave the batcher as it was
    throw_error(ErrorKind::kConfig, "data cursor (epoch " + std::to_string(cursor.epoch) +
                                        ", batch " + std::to_string(cursor.position) +
                                        ") is past the epoch's " + std::to_string(available) +
                                        " batches; did the dataset or the batch settings change?");
  }
  cursor_ = cursor;
}

Batch Batcher::next() {
  if (cursor_.position >= batches_per_epoch()) {
    plan_epoch(cursor_.epoch + 1);
    cursor_ = {cursor_.epoch + 1, 0};
  }
  const int64_t first_row = cursor_.position * options_.micro_batch_size;
  const int64_t rows =
      std::min<int64_t>(options_.micro_batch_size, static_cast<int64_t>(rows_.size()) - first_row);
  ++cursor_.position;
  return build(first_row, rows);
}

Batch Batcher::build(int64_t first_row, int64_t rows) const {
  // The examples of each output row: the batch's rows, then (paired) their partners.
  std::vector<std::vector<int64_t>> row_examples;
  for (int64_t r = 0; r < rows; ++r) {
    const Row& row = rows_[first_row + r];
    row_examples.emplace_back(order_.begin() + row.start, order_.begin() + row.start + row.count);
  }
  const bool paired = !partners_.empty();
  if (paired) {
    for (int64_t r = 0; r < rows; ++r) row_examples.push_back(row_examples[r]);
  }
  const auto total_rows = static_cast<int64_t>(row_examples.size());
  auto example_of = [&](int64_t row, int64_t id) -> const Example& {
    return paired && row >= rows ? partners_[id] : examples_[id];
  };
  int64_t width = options_.seq_len;
  if (!options_.packing) {
    width = 0;
    for (int64_t r = 0; r < total_rows; ++r) {
      width = std::max<int64_t>(width, example_of(r, row_examples[r].front()).ids.size());
    }
  }
  const auto long_options = at::TensorOptions().dtype(at::kLong);
  Batch batch;
  batch.pairs = paired ? rows : 0;
  batch.input_ids = at::full({total_rows, width}, options_.pad_id, long_options);
  batch.labels = at::full({total_rows, width}, kIgnoreLabel, long_options);
  batch.position_ids = at::zeros({total_rows, width}, long_options);
  if (options_.packing) batch.segment_ids = at::zeros({total_rows, width}, long_options);
  int64_t* ids = batch.input_ids.data_ptr<int64_t>();
  int64_t* labels = batch.labels.data_ptr<int64_t>();
  int64_t* positions = batch.position_ids.data_ptr<int64_t>();
  int64_t* segments = options_.packing ? batch.segment_ids.data_ptr<int64_t>() : nullptr;
  // Segment boundaries; int32 holds them, a micro-batch being capped at 2^28 tokens (REC-71).
  std::vector<int32_t> cu_seqlens = {0};
  auto end_segment = [&](int64_t end) {
    batch.max_seqlen = std::max<int64_t>(batch.max_seqlen, end - cu_seqlens.back());
    cu_seqlens.push_back(static_cast<int32_t>(end));
  };

  for (int64_t r = 0; r < total_rows; ++r) {
    const std::vector<int64_t>& members = row_examples[r];
    const auto count = static_cast<int64_t>(members.size());
    const int64_t base = r * width;
    int64_t column = 0;
    for (int64_t k = 0; k < count; ++k) {
      const Example& example = example_of(r, members[k]);
      if (r < rows) batch.example_ids.push_back(members[k]);
      for (size_t i = 0; i < example.ids.size(); ++i, ++column) {
        ids[base + column] = example.ids[i];
        labels[base + column] = example.labels[i];
        positions[base + column] = static_cast<int64_t>(i);
        if (segments) segments[base + column] = k;
        if (example.labels[i] != kIgnoreLabel) ++batch.loss_tokens;
      }
      if (options_.packing) end_segment(base + column);
    }
    batch.tokens += column;
    batch.row_lengths.push_back(column);
    batch.samples += count;
    // The padding tail: positions run on from 0 (padding mode: from the example's end), and in
    // packing mode it is a segment of its own, so every query has at least itself to attend to.
    for (int64_t tail = 0; column < width; ++column, ++tail) {
      positions[base + column] = options_.packing ? tail : column;
      if (segments) segments[base + column] = count;
    }
    if (options_.packing && cu_seqlens.back() != base + width) end_segment(base + width);
  }
  if (options_.packing) batch.cu_seqlens = at::tensor(cu_seqlens, at::kInt);
  return batch;
}

}  // namespace qtrain

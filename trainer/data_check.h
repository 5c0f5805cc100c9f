// `qtrain data-check RECIPE.yaml`: what the recipe's data section turns the dataset into, before
// anyone spends GPU hours on it. Loads the tokenizer only (no weights).
#pragma once

#include "data/examples.h"

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

struct Recipe;
class Tokenizer;

struct LengthSummary {
  int64_t min = 0, median = 0, p95 = 0, max = 0;
  double mean = 0;
};

// Order statistics of `lengths` (non-empty): median and p95 are the values at ranks
// floor(q * (n - 1)) of the sorted lengths.
LengthSummary summarize_lengths(std::vector<int64_t> lengths);

// The text of `example` with the tokens that carry loss between "[[" and "]]", decoded run by
// run; BOS and EOS show as <bos> and <eos>.
std::string render_loss_mask(const Example& example, const Tokenizer& tokenizer);

// The report: tokenizer, record and example counts (truncated, dropped, skipped), train/held-out
// split, token and loss-token totals, the length summary and histogram, batch fill for padded
// and packed micro-batches, optimizer steps per epoch, and the first example with its loss mask.
// Errors as load_training_data.
std::string data_check_report(const Recipe& recipe);

}  // namespace qtrain

// sample_next_token: greedy and nucleus sampling, and the vocabulary limit that keeps generation
// off the padding rows a model's embedding matrix has past its tokenizer.
#include "models/generate.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace qtrain {
namespace {

TEST(Sampling, GreedyTakesTheLargestLogitBelowTheVocabularyLimit) {
  const at::Tensor logits = at::tensor({0.0f, 1.0f, 5.0f, 9.0f, 7.0f});
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  GenerateOptions options;
  EXPECT_EQ(sample_next_token(logits, options, gen), 3);
  options.vocab_limit = 3;  // ids 3 and 4 are padding rows
  EXPECT_EQ(sample_next_token(logits, options, gen), 2);
  options.vocab_limit = 5;
  EXPECT_EQ(sample_next_token(logits, options, gen), 3);
}

TEST(Sampling, SamplingNeverReturnsAPaddingId) {
  // The padding rows get the highest logits: without the limit they take nearly every draw.
  at::Tensor logits = at::zeros({8});
  logits.narrow(0, 6, 2).fill_(20.0f);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  GenerateOptions options{.temperature = 1.0, .top_p = 0.9};
  int padded = 0;
  for (int i = 0; i < 200; ++i) padded += sample_next_token(logits, options, gen) >= 6;
  EXPECT_GT(padded, 190);
  options.vocab_limit = 6;
  std::vector<int> seen(6, 0);
  for (int i = 0; i < 600; ++i) {
    const int64_t id = sample_next_token(logits, options, gen);
    ASSERT_GE(id, 0);
    ASSERT_LT(id, 6);
    ++seen[id];
  }
  // Uniform over the six real tokens (top_p 0.9 keeps all six: each holds 1/6 of the mass).
  for (int count : seen) EXPECT_GT(count, 50);
}

}  // namespace
}  // namespace qtrain

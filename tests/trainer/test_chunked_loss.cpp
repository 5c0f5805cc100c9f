// The chunked linear + cross-entropy against the full path, causal_lm_loss_sum(lm_head(hidden)):
// the same loss and the same gradients for hidden and for a LoRA on lm_head, whatever the chunk
// size; float64 against a float64 cross-entropy; all-masked labels; bfloat16; an NF4 head; a head
// whose backward reads its output; eval without grad; dropout drawn once; a second backward and
// create_graph; evaluate() on a model; Gemma 2's final logit soft cap (loss, gradients, evaluate()
// and sliding_window_perplexity() against CausalLM::forward's capped logits).
#include "trainer/chunked_loss.h"

#include "core/error.h"
#include "data/examples.h"
#include "models/llama.h"
#include "models/quantized_linear_slot.h"
#include "models/tiny_model.h"
#include "peft/lora_linear.h"
#include "quant/quantized_tensor.h"
#include "tests/models/random_model.h"
#include "trainer/causal_lm_loss.h"
#include "trainer/evaluate.h"
#include "trainer/perplexity.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/cuda.h>

#include <cmath>
#include <vector>

namespace qtrain {
namespace {

constexpr int64_t kVocab = 32768, kHidden = 64, kBatch = 2, kLength = 41;

at::Generator seeded(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

// lm_head = LoRA(r 4) around a frozen dense [V, H], with B random so the adapter matters.
std::shared_ptr<LoraLinear> lora_head(at::ScalarType dtype, double dropout = 0.0) {
  auto base =
      std::make_shared<DenseLinear>(kHidden, kVocab, false, at::TensorOptions().dtype(dtype));
  torch::NoGradGuard no_grad;
  base->weight().copy_(at::randn({kVocab, kHidden}, seeded(1)) / std::sqrt(kHidden));
  LoraConfig config;
  config.r = 4;
  config.alpha = 8;
  config.dropout = dropout;
  config.dtype = dtype;
  auto lora = std::make_shared<LoraLinear>(base, config, seeded(2));
  lora->load_adapter_tensor("lora_B.weight", at::randn({kVocab, 4}, seeded(3)) * 0.1);
  return lora;
}

// Random next tokens; about one in five positions masked, and the first of each row (shifted
// away by the causal loss) always.
at::Tensor random_labels(uint64_t seed, int64_t length = kLength) {
  auto gen = seeded(seed);
  at::Tensor labels = at::randint(0, kVocab, {kBatch, length}, gen, at::kLong);
  labels.masked_fill_(at::rand({kBatch, length}, gen) < 0.2, kIgnoreLabel);
  labels.select(1, 0).fill_(kIgnoreLabel);
  return labels;
}

at::Tensor random_hidden(at::ScalarType dtype, uint64_t seed, int64_t length = kLength) {
  return at::randn({kBatch, length, kHidden}, seeded(seed)).to(dtype).requires_grad_(true);
}

struct LossAndGrads {
  at::Tensor loss, hidden, lora_A, lora_B;  // float64 copies
};

// The full path's logits, soft-capped as CausalLM::forward does when cap > 0.
at::Tensor capped(const at::Tensor& logits, double cap) {
  return cap > 0 ? at::tanh(logits / cap) * cap : logits;
}

// cap: the final logit soft cap, 0 = none.
LossAndGrads run(const at::Tensor& hidden, LoraLinear& head, const at::Tensor& labels,
                 int64_t chunk_tokens, bool chunked, double cap = 0) {
  if (hidden.grad().defined()) hidden.mutable_grad().zero_();
  head.zero_grad();
  at::Tensor loss = chunked ? chunked_causal_lm_loss_sum(hidden, head, labels, chunk_tokens, cap)
                            : causal_lm_loss_sum(capped(head.forward(hidden), cap), labels);
  EXPECT_EQ(loss.scalar_type(), at::kFloat);
  EXPECT_EQ(loss.dim(), 0);
  loss.backward();
  // A real copy: for float64, to(kDouble) would alias hidden.grad(), which the next run zeroes.
  auto copy = [](const at::Tensor& t) {
    return t.defined() ? t.to(at::kDouble, /*non_blocking=*/false, /*copy=*/true) : t;
  };
  return {copy(loss), copy(hidden.grad()), copy(head.lora_A().grad()), copy(head.lora_B().grad())};
}

double relative(const at::Tensor& got, const at::Tensor& want) {
  return (got - want).norm().item<double>() / std::max(want.norm().item<double>(), 1e-30);
}

void expect_close(const LossAndGrads& got, const LossAndGrads& want, double loss_tol,
                  double grad_tol) {
  EXPECT_LE(relative(got.loss, want.loss), loss_tol)
      << got.loss.item<double>() << " vs " << want.loss.item<double>();
  ASSERT_TRUE(got.hidden.defined() && got.lora_A.defined() && got.lora_B.defined());
  EXPECT_LE(relative(got.hidden, want.hidden), grad_tol);
  EXPECT_LE(relative(got.lora_A, want.lora_A), grad_tol);
  EXPECT_LE(relative(got.lora_B, want.lora_B), grad_tol);
}

// float32: within 1e-6 relative (the norm of the difference over the norm of the reference) for
// an odd chunk size, exactly N, 0 (one chunk of all) and more than N. One token per chunk is held
// to 1e-5: its matrix products are matrix-vector ones, which sum the 32768 vocabulary terms of the
// hidden gradient in another order than the full path's matrix-matrix product.
TEST(ChunkedLoss, EqualsTheFullPathForEveryChunkSize) {
  auto head = lora_head(at::kFloat);
  const at::Tensor labels = random_labels(4);
  const at::Tensor hidden = random_hidden(at::kFloat, 5);
  const int64_t n = count_loss_tokens(labels);
  ASSERT_GT(n, 40);
  const LossAndGrads full = run(hidden, *head, labels, 0, false);
  ASSERT_GT(full.lora_A.abs().max().item<double>(), 0);
  for (int64_t chunk : {int64_t{7}, n, int64_t{0}, 10 * n}) {
    SCOPED_TRACE("chunk_tokens " + std::to_string(chunk));
    expect_close(run(hidden, *head, labels, chunk, true), full, 1e-6, 1e-6);
  }
  SCOPED_TRACE("chunk_tokens 1");
  expect_close(run(hidden, *head, labels, 1, true), full, 1e-6, 1e-5);
}

// The full path with its cross-entropy in float64 too: the float64 truth for a float64 model.
LossAndGrads float64_cross_entropy(const at::Tensor& hidden, LoraLinear& head,
                                   const at::Tensor& labels) {
  hidden.mutable_grad() = at::Tensor();
  head.zero_grad();
  const int64_t length = labels.size(1);
  const at::Tensor logits = head.forward(hidden).narrow(1, 0, length - 1).flatten(0, 1);
  const at::Tensor targets = labels.narrow(1, 1, length - 1).flatten();
  at::Tensor loss = at::cross_entropy_loss(logits, targets, {}, at::Reduction::Sum, kIgnoreLabel);
  loss.backward();
  return {loss.detach().clone(), hidden.grad().clone(), head.lora_A().grad().clone(),
          head.lora_B().grad().clone()};
}

// float64 model and adapter, the loss itself float32 in both paths; 2 x 100 positions, so one
// chunk can hold more than the 128 rows of a float32 working block (one token per chunk is the
// float32 test's). The chunked path computes the logits' gradient as exp(x - max) / sum, the full
// path (log_softmax's backward) as exp(x - max - log(sum)), whose float32 argument carries an
// absolute rounding error of its own size: the two differ by about 1e-7 relative per logit, which
// the gradients' sums over the vocabulary carry as 2.8e-8 (hidden), 2.3e-8 (lora_A) and 3.3e-9
// (lora_B) whatever the chunk size: held to 5e-8. Against a float64 cross-entropy the chunked
// gradients are no farther than the full path's (2.0e-8, 2.0e-8, 1.90e-8 against 3.3e-8,
// 3.0e-8, 1.92e-8; held with 10% slack).
TEST(ChunkedLoss, Float64AgreesToFloat32RoundingForEveryChunkSize) {
  auto head = lora_head(at::kDouble);
  const at::Tensor labels = random_labels(19, 101);
  const at::Tensor hidden = random_hidden(at::kDouble, 20, 101);
  const int64_t n = count_loss_tokens(labels);
  ASSERT_GT(n, 128);
  const LossAndGrads truth = float64_cross_entropy(hidden, *head, labels);
  const LossAndGrads full = run(hidden, *head, labels, 0, false);
  for (int64_t chunk : {int64_t{7}, n, int64_t{0}}) {
    SCOPED_TRACE("chunk_tokens " + std::to_string(chunk));
    const LossAndGrads chunked = run(hidden, *head, labels, chunk, true);
    expect_close(chunked, full, 1e-6, 5e-8);
    EXPECT_LE(relative(chunked.hidden, truth.hidden), 1.1 * relative(full.hidden, truth.hidden));
    EXPECT_LE(relative(chunked.lora_A, truth.lora_A), 1.1 * relative(full.lora_A, truth.lora_A));
    EXPECT_LE(relative(chunked.lora_B, truth.lora_B), 1.1 * relative(full.lora_B, truth.lora_B));
  }
}

TEST(ChunkedLoss, AllMaskedGivesZeroAndZeroGradients) {
  auto head = lora_head(at::kFloat);
  at::Tensor labels = at::full({kBatch, kLength}, kIgnoreLabel, at::kLong);
  labels.select(1, 0).fill_(5);  // the first label is shifted away: still no loss token
  const at::Tensor hidden = random_hidden(at::kFloat, 6);
  const LossAndGrads full = run(hidden, *head, labels, 0, false);
  const LossAndGrads chunked = run(hidden, *head, labels, 7, true);
  EXPECT_EQ(chunked.loss.item<double>(), 0.0);
  ASSERT_TRUE(chunked.hidden.defined() && chunked.lora_A.defined() && chunked.lora_B.defined());
  EXPECT_EQ(chunked.hidden.abs().max().item<double>(), 0.0);
  EXPECT_EQ(chunked.lora_A.abs().max().item<double>(), 0.0);
  EXPECT_EQ(chunked.lora_B.abs().max().item<double>(), 0.0);
  EXPECT_TRUE(chunked.lora_B.equal(full.lora_B));
}

// bfloat16 model and adapter: logits are rounded to bf16 before the float32 cross-entropy in both
// paths, but the two multiply different row blocks (and bf16 gradients are summed in different
// orders), so they agree only to bf16 precision: loss within 1e-3, gradients within 2e-2 relative.
TEST(ChunkedLoss, BFloat16AgreesToBFloat16Precision) {
  auto head = lora_head(at::kBFloat16);
  const at::Tensor labels = random_labels(7);
  const at::Tensor hidden = random_hidden(at::kBFloat16, 8);
  const LossAndGrads full = run(hidden, *head, labels, 0, false);
  for (int64_t chunk : {int64_t{7}, int64_t{0}}) {
    SCOPED_TRACE("chunk_tokens " + std::to_string(chunk));
    const LossAndGrads chunked = run(hidden, *head, labels, chunk, true);
    EXPECT_EQ(hidden.grad().scalar_type(), at::kBFloat16);
    EXPECT_EQ(head->lora_B().grad().scalar_type(), at::kBFloat16);
    expect_close(chunked, full, 1e-3, 2e-2);
  }
}

// An NF4 base under the LoRA: the logits' gradient is written over the head's output, which
// neither the quantized linear's backward nor the adapter's reads.
TEST(ChunkedLoss, QuantizedHeadEqualsTheFullPath) {
  at::Tensor w = at::randn({kVocab, kHidden}, seeded(30)) / std::sqrt(kHidden);
  auto base = std::make_shared<QuantizedLinearSlot>(quantize(w, QuantConfig{}), at::Tensor());
  LoraConfig config;
  config.r = 4;
  config.alpha = 8;
  config.dtype = at::kFloat;
  LoraLinear head(base, config, seeded(31));
  head.load_adapter_tensor("lora_B.weight", at::randn({kVocab, 4}, seeded(32)) * 0.1);
  const at::Tensor labels = random_labels(33);
  const at::Tensor hidden = random_hidden(at::kFloat, 34);
  const LossAndGrads full = run(hidden, head, labels, 0, false);
  expect_close(run(hidden, head, labels, 7, true), full, 1e-6, 1e-6);
}

// A head whose backward reads its own output (tanh keeps its result): writing the gradient over
// that output bumps its version, and autograd refuses rather than differentiate wrong values.
class TanhHead : public LinearSlot {
 public:
  TanhHead() : inner_(kHidden, kVocab, false, at::TensorOptions().dtype(at::kFloat)) {}
  at::Tensor forward(const at::Tensor& x) override { return at::tanh(inner_.forward(x)); }
  int64_t in_features() const override { return kHidden; }
  int64_t out_features() const override { return kVocab; }

 private:
  DenseLinear inner_;
};

TEST(ChunkedLoss, HeadThatKeepsItsOutputIsRefusedNotMiscomputed) {
  TanhHead head;
  try {
    chunked_causal_lm_loss_sum(random_hidden(at::kFloat, 35), head, random_labels(36), 9);
    ADD_FAILURE() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("inplace"), std::string::npos) << e.what();
  }
}

TEST(ChunkedLoss, EvalWithoutGradIsTheForwardOnly) {
  auto head = lora_head(at::kFloat);
  head->eval();
  const at::Tensor labels = random_labels(9);
  const at::Tensor hidden = at::randn({kBatch, kLength, kHidden}, seeded(10));
  torch::NoGradGuard no_grad;
  const at::Tensor full = causal_lm_loss_sum(head->forward(hidden), labels);
  const at::Tensor chunked = chunked_causal_lm_loss_sum(hidden, *head, labels, 16);
  EXPECT_FALSE(chunked.requires_grad());
  EXPECT_LE(relative(chunked.to(at::kDouble), full.to(at::kDouble)), 1e-6);
}

// LoRA on lm_head alone: the hidden states need no gradient, the adapter still learns.
TEST(ChunkedLoss, AdapterOnTheHeadAloneStillGetsItsGradient) {
  auto head = lora_head(at::kFloat);
  const at::Tensor labels = random_labels(11);
  const at::Tensor hidden = at::randn({kBatch, kLength, kHidden}, seeded(12));
  head->zero_grad();
  causal_lm_loss_sum(head->forward(hidden), labels).backward();
  const at::Tensor want = head->lora_B().grad().clone();
  head->zero_grad();
  at::Tensor loss = chunked_causal_lm_loss_sum(hidden, *head, labels, 9);
  ASSERT_TRUE(loss.requires_grad());
  loss.backward();
  EXPECT_LE(relative(head->lora_B().grad(), want), 1e-6);
}

// With dropout on lm_head's adapter each chunk draws its masks once, in forward, and backward
// uses the gradients of those very masks. Reference: plain autograd over the same chunks in the
// same order from the same seed, which must also leave the generator where the chunked loss does.
TEST(ChunkedLoss, DropoutIsDrawnOnceInForward) {
  auto head = lora_head(at::kFloat, /*dropout=*/0.5);
  const at::Tensor labels = random_labels(13);
  const at::Tensor hidden = random_hidden(at::kFloat, 14);
  constexpr int64_t kChunk = 8;

  std::vector<int64_t> rows, targets;
  for (int64_t b = 0; b < kBatch; ++b) {
    for (int64_t t = 0; t + 1 < kLength; ++t) {
      const int64_t label = labels[b][t + 1].item<int64_t>();
      if (label == kIgnoreLabel) continue;
      rows.push_back(b * kLength + t);
      targets.push_back(label);
    }
  }
  const int64_t n = static_cast<int64_t>(rows.size());
  at::manual_seed(21);
  const at::Tensor gathered =
      hidden.reshape({-1, kHidden}).index_select(0, at::tensor(rows, at::kLong));
  const at::Tensor target = at::tensor(targets, at::kLong);
  at::Tensor want = at::zeros({}, at::kFloat);
  for (int64_t s = 0; s < n; s += kChunk) {
    const int64_t c = std::min(kChunk, n - s);
    want = want + at::cross_entropy_loss(head->forward(gathered.narrow(0, s, c)),
                                         target.narrow(0, s, c), {}, at::Reduction::Sum);
  }
  const at::Tensor want_next_draw = at::rand({4});
  head->zero_grad();
  want.backward();
  const at::Tensor want_hidden = hidden.grad().clone();
  const at::Tensor want_a = head->lora_A().grad().clone();

  hidden.mutable_grad().zero_();
  head->zero_grad();
  at::manual_seed(21);
  at::Tensor got = chunked_causal_lm_loss_sum(hidden, *head, labels, kChunk);
  EXPECT_TRUE(at::rand({4}).equal(want_next_draw));  // as many draws as the reference's forward
  at::randn({1000});  // draws between forward and backward change nothing
  got.backward();
  EXPECT_LE(relative(got, want), 1e-6);
  EXPECT_LE(relative(hidden.grad(), want_hidden), 1e-6);
  EXPECT_LE(relative(head->lora_A().grad(), want_a), 1e-6);
}

// The incoming gradient scales every stored gradient: backward of 2.5 * loss gives 2.5 times the
// gradients; with retain_graph a second backward adds the same gradients again; without it the
// second one is refused, as for any autograd graph.
TEST(ChunkedLoss, BackwardScalesByTheIncomingGradientAndRunsOncePerGraph) {
  auto head = lora_head(at::kFloat);
  const at::Tensor labels = random_labels(22);
  const at::Tensor hidden = random_hidden(at::kFloat, 23);
  const LossAndGrads once = run(hidden, *head, labels, 9, true);

  hidden.mutable_grad().zero_();
  head->zero_grad();
  at::Tensor loss = chunked_causal_lm_loss_sum(hidden, *head, labels, 9);
  (loss * 2.5).backward({}, /*retain_graph=*/true);
  EXPECT_LE(relative(hidden.grad().to(at::kDouble), once.hidden * 2.5), 1e-7);
  EXPECT_LE(relative(head->lora_B().grad().to(at::kDouble), once.lora_B * 2.5), 1e-7);
  loss.backward();
  EXPECT_LE(relative(hidden.grad().to(at::kDouble), once.hidden * 3.5), 1e-7);
  EXPECT_LE(relative(head->lora_A().grad().to(at::kDouble), once.lora_A * 3.5), 1e-7);
  EXPECT_THROW(loss.backward(), c10::Error);
}

// Differentiating the gradient would differentiate constants: refused, not silently wrong.
TEST(ChunkedLoss, CreateGraphIsRefused) {
  auto head = lora_head(at::kFloat);
  const at::Tensor hidden = random_hidden(at::kFloat, 24);
  at::Tensor loss = chunked_causal_lm_loss_sum(hidden, *head, random_labels(25), 9);
  try {
    loss.backward({}, /*retain_graph=*/true, /*create_graph=*/true);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
    EXPECT_NE(e.message().find("create_graph"), std::string::npos) << e.message();
  }
}

TEST(ChunkedLoss, LabelOutsideTheVocabularyIsAnInternalError) {
  auto head = lora_head(at::kFloat);
  at::Tensor labels = random_labels(15);
  labels[1][3] = kVocab;
  try {
    chunked_causal_lm_loss_sum(random_hidden(at::kFloat, 16), *head, labels, 0);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
    EXPECT_NE(e.message().find("label 32768 at [1, 3]"), std::string::npos) << e.message();
  }
}

// evaluate() (chunked) against the full path over the same batches.
TEST(ChunkedLoss, EvaluateEqualsTheFullPathLoss) {
  auto model = testing::random_model(testing::small_config("llama"), 5, at::kFloat);
  std::vector<Example> examples;
  for (int64_t i = 0; i < 3; ++i) {
    Example e;
    for (int64_t k = 0; k < 9 + 3 * i; ++k) e.ids.push_back(3 + (k * 7 + i) % 90);
    e.labels = e.ids;
    e.labels[0] = e.labels[1] = kIgnoreLabel;
    examples.push_back(e);
  }
  double want_sum = 0;
  int64_t want_tokens = 0;
  {
    torch::NoGradGuard no_grad;
    model->eval();
    for (const Example& e : examples) {
      const at::Tensor ids = at::tensor(e.ids, at::kLong).unsqueeze(0);
      const at::Tensor labels = at::tensor(e.labels, at::kLong).unsqueeze(0);
      want_sum += causal_lm_loss_sum(model->forward({.input_ids = ids}), labels).item<double>();
      want_tokens += count_loss_tokens(labels);
    }
  }
  const EvalResult got = evaluate(*model, examples, 1, 32, 0, 0, 0, 1, /*loss_chunk_tokens=*/4);
  EXPECT_EQ(got.tokens, want_tokens);
  EXPECT_NEAR(got.loss_sum, want_sum, 1e-5 * want_sum);
  EXPECT_TRUE(model->is_training());
}

// Soft-capped logits (cap 1.5, well inside the logits' range, so tanh's derivative matters):
// float32 within 1e-6 of cross_entropy(c * tanh(lm_head(hidden) / c)) for every chunk size, one
// token per chunk held to 1e-5 as in the uncapped test; 2 x 100 positions put more than one
// 128-row block of the capped gradient in a chunk. The cap changes the loss by far more.
TEST(ChunkedLoss, SoftCappedEqualsTheCappedFullPathForEveryChunkSize) {
  constexpr double kCap = 1.5;
  auto head = lora_head(at::kFloat);
  for (int64_t length : {kLength, int64_t{101}}) {
    SCOPED_TRACE("length " + std::to_string(length));
    const at::Tensor labels = random_labels(40, length);
    const at::Tensor hidden = random_hidden(at::kFloat, 41, length);
    const int64_t n = count_loss_tokens(labels);
    const LossAndGrads full = run(hidden, *head, labels, 0, false, kCap);
    const LossAndGrads uncapped = run(hidden, *head, labels, 0, false);
    EXPECT_GT(relative(uncapped.loss, full.loss), 1e-2);
    EXPECT_GT(relative(uncapped.hidden, full.hidden), 1e-2);
    for (int64_t chunk : {int64_t{7}, n, int64_t{0}, 10 * n}) {
      SCOPED_TRACE("chunk_tokens " + std::to_string(chunk));
      expect_close(run(hidden, *head, labels, chunk, true, kCap), full, 1e-6, 1e-6);
    }
    if (length == kLength) {
      SCOPED_TRACE("chunk_tokens 1");
      expect_close(run(hidden, *head, labels, 1, true, kCap), full, 1e-6, 1e-5);
    }
  }
}

// bfloat16 logits take the capped path through a float32 working copy: the same bf16 precision as
// the uncapped bfloat16 test. Eval without grad (forward only) agrees to float32 rounding.
TEST(ChunkedLoss, SoftCappedBFloat16AndEval) {
  constexpr double kCap = 1.5;
  {
    auto head = lora_head(at::kBFloat16);
    const at::Tensor labels = random_labels(42);
    const at::Tensor hidden = random_hidden(at::kBFloat16, 43);
    const LossAndGrads full = run(hidden, *head, labels, 0, false, kCap);
    expect_close(run(hidden, *head, labels, 7, true, kCap), full, 1e-3, 2e-2);
  }
  auto head = lora_head(at::kFloat);
  head->eval();
  const at::Tensor labels = random_labels(44);
  const at::Tensor hidden = at::randn({kBatch, kLength, kHidden}, seeded(45));
  torch::NoGradGuard no_grad;
  const at::Tensor full = causal_lm_loss_sum(capped(head->forward(hidden), kCap), labels);
  for (int64_t chunk : {int64_t{16}, int64_t{0}}) {
    const at::Tensor chunked = chunked_causal_lm_loss_sum(hidden, *head, labels, chunk, kCap);
    EXPECT_LE(relative(chunked.to(at::kDouble), full.to(at::kDouble)), 1e-6);
  }
}

// A Gemma 2 model (final_logit_softcapping 3, tied embeddings): evaluate() and
// sliding_window_perplexity() (chunked, soft cap from the config) equal the loss of
// CausalLM::forward's own soft-capped logits; the cap matters for this model.
TEST(ChunkedLoss, Gemma2EvaluateAndPerplexityEqualForwardLogits) {
  ModelConfig config = tiny_model_config("gemma2", "micro");
  config.vocab_size = 97;
  config.final_logit_softcapping = 3.0;
  auto model = testing::random_model(config, 6, at::kFloat);
  std::vector<Example> examples;
  for (int64_t i = 0; i < 3; ++i) {
    Example e;
    for (int64_t k = 0; k < 9 + 3 * i; ++k) e.ids.push_back(3 + (k * 7 + i) % 90);
    e.labels = e.ids;
    e.labels[0] = e.labels[1] = kIgnoreLabel;
    examples.push_back(e);
  }
  double want_sum = 0, uncapped_sum = 0;
  int64_t want_tokens = 0;
  {
    torch::NoGradGuard no_grad;
    model->eval();
    for (const Example& e : examples) {
      const ForwardInputs inputs{.input_ids = at::tensor(e.ids, at::kLong).unsqueeze(0)};
      const at::Tensor labels = at::tensor(e.labels, at::kLong).unsqueeze(0);
      want_sum += causal_lm_loss_sum(model->forward(inputs), labels).item<double>();
      uncapped_sum +=
          causal_lm_loss_sum(model->lm_head->forward(model->hidden_states(inputs)), labels)
              .item<double>();
      want_tokens += count_loss_tokens(labels);
    }
  }
  EXPECT_GT(std::abs(uncapped_sum - want_sum), 1e-2 * want_sum);
  const EvalResult got = evaluate(*model, examples, 1, 32, 0, 0, 0, 1, /*loss_chunk_tokens=*/4);
  EXPECT_EQ(got.tokens, want_tokens);
  EXPECT_NEAR(got.loss_sum, want_sum, 1e-5 * want_sum);

  // One window over the whole stream: every token after the first scored once.
  const std::vector<int64_t>& stream = examples[2].ids;
  const at::Tensor ids = at::tensor(stream, at::kLong).unsqueeze(0);
  at::Tensor labels = ids.clone();
  labels.select(1, 0).fill_(kIgnoreLabel);
  double want_nll = 0;
  {
    torch::NoGradGuard no_grad;
    model->eval();
    want_nll = causal_lm_loss_sum(model->forward({.input_ids = ids}), labels).item<double>();
  }
  const int64_t n = static_cast<int64_t>(stream.size());
  const PerplexityResult ppl = sliding_window_perplexity(
      *model, stream, {.max_len = n, .stride = n, .loss_chunk_tokens = 4}, at::kCPU);
  EXPECT_EQ(ppl.scored_tokens, n - 1);
  EXPECT_NEAR(ppl.mean_loss, want_nll / static_cast<double>(n - 1), 1e-5 * want_nll / (n - 1));
}

TEST(ChunkedLoss, CudaEqualsTheFullPath) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  auto head = lora_head(at::kFloat);
  head->to(at::kCUDA);
  const at::Tensor labels = random_labels(17);
  const at::Tensor hidden =
      at::randn({kBatch, kLength, kHidden}, seeded(18)).to(at::kCUDA).requires_grad_(true);
  const LossAndGrads full = run(hidden, *head, labels.to(at::kCUDA), 0, false);
  const LossAndGrads chunked = run(hidden, *head, labels, 7, true);
  EXPECT_TRUE(chunked.loss.is_cuda());
  expect_close(chunked, full, 1e-5, 1e-5);
}

}  // namespace
}  // namespace qtrain

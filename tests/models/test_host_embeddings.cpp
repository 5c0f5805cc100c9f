// model.embeddings_on_host: the embedding table in host memory, rows gathered there and copied to
// the device, gives exactly what the table beside the other weights gives: logits, gradients,
// cached generation, loaded and synthetic models. Tied models refuse it naming the recipe key. On
// the CPU the gather-then-copy path is forced with set_embeddings_on_host(true); the CUDA tests
// check that the table really stays in pinned host memory.
#include "core/error.h"
#include "models/hf_loader.h"
#include "models/quantized_loader.h"
#include "models/synthetic_model.h"
#include "models/tiny_model.h"
#include "tests/models/random_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <map>
#include <string>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

at::Tensor batch_ids(int64_t vocab) {
  return at::tensor({1, 40, 7, 96, 12, 30, 5, 64, 3, 3, 88, 0}, at::kLong)
      .remainder(vocab)
      .view({2, 6});
}

// Logits [B, T, V] and every parameter's gradient after backward of a fixed function of them.
struct ForwardResult {
  at::Tensor logits;
  std::map<std::string, at::Tensor> grads;
};

ForwardResult forward_backward(CausalLM& model, const at::Tensor& ids) {
  model.zero_grad();
  ForwardResult out;
  out.logits = model.forward({.input_ids = ids});
  // A loss touching every logit with distinct weights, so every row's gradient is distinct.
  const at::Tensor weights =
      at::linspace(-1, 1, out.logits.numel(), out.logits.options()).view(out.logits.sizes());
  (out.logits * weights).sum().backward();
  for (const auto& item : model.named_parameters()) {
    if (item.value().grad().defined()) out.grads[item.key()] = item.value().grad().clone();
  }
  out.logits = out.logits.detach();
  return out;
}

void expect_same(const ForwardResult& a, const ForwardResult& b) {
  EXPECT_TRUE(at::equal(a.logits.cpu(), b.logits.cpu()));
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (const auto& [name, grad] : a.grads) {
    ASSERT_TRUE(b.grads.count(name)) << name;
    EXPECT_TRUE(at::equal(grad.cpu(), b.grads.at(name).cpu())) << name;
  }
}

TEST(HostEmbeddings, TrainableTableGivesTheSameLogitsAndGradients) {
  auto model = t::random_model(t::small_config("llama"), 3);
  const at::Tensor ids = batch_ids(model->config().vocab_size);
  const ForwardResult device_table = forward_backward(*model, ids);
  model->set_embeddings_on_host(true);
  ASSERT_TRUE(model->embeddings_on_host());
  const ForwardResult host_table = forward_backward(*model, ids);
  expect_same(device_table, host_table);
  EXPECT_TRUE(host_table.grads.count("model.embed_tokens.weight"));
}

// The QLoRA case: a frozen table (gathered into a plain buffer), checkpointed layers.
TEST(HostEmbeddings, FrozenTableWithCheckpointingGivesTheSameGradients) {
  auto model = t::random_model(t::small_config("llama"), 5);
  model->model->embed_tokens.requires_grad_(false);
  model->set_gradient_checkpointing(true);
  model->train();
  const at::Tensor ids = batch_ids(model->config().vocab_size);
  const ForwardResult device_table = forward_backward(*model, ids);
  model->set_embeddings_on_host(true);
  const ForwardResult host_table = forward_backward(*model, ids);
  expect_same(device_table, host_table);
  EXPECT_FALSE(host_table.grads.count("model.embed_tokens.weight"));
  EXPECT_TRUE(host_table.grads.count("model.layers.0.self_attn.q_proj.weight"));
}

TEST(HostEmbeddings, CachedGenerationGivesTheSameLogits) {
  auto model = t::random_model(t::small_config("llama"), 7);
  torch::NoGradGuard no_grad;
  const at::Tensor ids = batch_ids(model->config().vocab_size);
  auto decode = [&] {
    KvCache cache;
    at::Tensor first = model->forward({.input_ids = ids.narrow(1, 0, 4), .cache = &cache});
    at::Tensor next = model->forward({.input_ids = ids.narrow(1, 4, 1), .cache = &cache});
    return at::cat({first, next}, 1);
  };
  const at::Tensor device_table = decode();
  model->set_embeddings_on_host(true);
  EXPECT_TRUE(at::equal(device_table, decode()));
  model->set_embeddings_on_host(false);
  EXPECT_FALSE(model->embeddings_on_host());
  EXPECT_TRUE(at::equal(device_table, decode()));
}

void expect_refused(const std::function<void()>& action) {
  try {
    action();
    FAIL() << "expected Error(kConfig)";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.context().field, "model.embeddings_on_host");
    EXPECT_NE(std::string(e.what()).find("tie_word_embeddings"), std::string::npos) << e.what();
  }
}

TEST(HostEmbeddings, TiedModelsRefuseItNamingTheRecipeKey) {
  const ModelConfig tied = t::small_config("qwen2");
  ASSERT_TRUE(tied.tie_word_embeddings);
  expect_refused([&] {
    CausalLM model(tied, at::TensorOptions().dtype(at::kFloat), {}, EmbeddingPlacement::kHost);
  });
  auto model = t::random_model(tied, 1);
  expect_refused([&] { model->set_embeddings_on_host(true); });
  EXPECT_FALSE(model->embeddings_on_host());
  EXPECT_NO_THROW(check_embedding_placement(tied, EmbeddingPlacement::kDevice));
}

TEST(HostEmbeddings, LoadersAndSyntheticModelsHonourThePlacement) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("m");
  write_tiny_model({.arch = "llama", .preset = "micro", .seed = 2}, dir);
  torch::NoGradGuard no_grad;
  const at::Tensor ids = at::tensor({1, 40, 7, 99, 12, 300}, at::kLong).view({1, -1});

  auto dense = load_causal_lm(dir);
  auto dense_host = load_causal_lm(dir, {.embeddings = EmbeddingPlacement::kHost});
  EXPECT_TRUE(dense_host->embeddings_on_host());
  EXPECT_TRUE(
      at::equal(dense->forward({.input_ids = ids}), dense_host->forward({.input_ids = ids})));

  QuantizedLoadOptions options{.dtype = at::kFloat, .quant = {QuantType::kNF4, 64, true}};
  auto quantized = load_quantized_causal_lm(dir, options);
  options.embeddings = EmbeddingPlacement::kHost;
  auto quantized_host = load_quantized_causal_lm(dir, options);
  EXPECT_TRUE(quantized_host->embeddings_on_host());
  EXPECT_TRUE(at::equal(quantized->forward({.input_ids = ids}),
                        quantized_host->forward({.input_ids = ids})));

  SyntheticModelOptions synthetic{.dtype = at::kFloat, .quant = QuantConfig{}, .seed = 9};
  auto drawn = make_synthetic_causal_lm(dense->config(), synthetic);
  synthetic.embeddings = EmbeddingPlacement::kHost;
  auto drawn_host = make_synthetic_causal_lm(dense->config(), synthetic);
  EXPECT_TRUE(drawn_host->embeddings_on_host());
  EXPECT_TRUE(
      at::equal(drawn->forward({.input_ids = ids}), drawn_host->forward({.input_ids = ids})));
}

// ---- CUDA: the table really stays on the host ----

class HostEmbeddingsCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

// A copy of `source` (a CPU model) on CUDA, its table placed as `placement` says.
std::shared_ptr<CausalLM> cuda_copy(const CausalLM& source, EmbeddingPlacement placement) {
  auto model = std::make_shared<CausalLM>(source.config(),
                                          at::TensorOptions().dtype(at::kFloat).device(at::kCUDA),
                                          LinearFactory{}, placement);
  torch::NoGradGuard no_grad;
  const auto from = source.named_parameters();
  for (auto& item : model->named_parameters()) item.value().copy_(from[item.key()]);
  return model;
}

void expect_close(const ForwardResult& a, const ForwardResult& b) {
  EXPECT_LT(t::max_abs_diff(a.logits.cpu(), b.logits.cpu()), 1e-5);
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (const auto& [name, grad] : a.grads) {
    ASSERT_TRUE(b.grads.count(name)) << name;
    EXPECT_LT(t::max_abs_diff(grad.cpu(), b.grads.at(name).cpu()), 1e-5) << name;
  }
}

TEST_F(HostEmbeddingsCuda, TableStaysPinnedOnTheHostAndGivesTheSameResults) {
  auto cpu = t::random_model(t::small_config("llama"), 11);
  auto on_device = cuda_copy(*cpu, EmbeddingPlacement::kDevice);
  auto on_host = cuda_copy(*cpu, EmbeddingPlacement::kHost);
  const at::Tensor& table = on_host->model->embed_tokens;
  EXPECT_TRUE(table.is_cpu());
  EXPECT_TRUE(table.is_pinned());
  for (const auto& item : on_host->named_parameters()) {
    if (item.key() != "model.embed_tokens.weight")
      EXPECT_TRUE(item.value().is_cuda()) << item.key();
  }
  EXPECT_TRUE(on_host->device().is_cuda());
  for (auto* model : {on_device.get(), on_host.get()}) {
    model->model->embed_tokens.requires_grad_(false);
    model->set_gradient_checkpointing(true);
  }
  const at::Tensor ids = batch_ids(cpu->config().vocab_size);
  const ForwardResult reference = forward_backward(*on_device, ids.cuda());
  const ForwardResult host_ids = forward_backward(*on_host, ids);
  EXPECT_TRUE(host_ids.logits.is_cuda());
  expect_close(reference, host_ids);
  // Device ids: one device-to-host copy, the same results.
  expect_close(reference, forward_backward(*on_host, ids.cuda()));
  // A trainable table: autograd carries its gradient back to the host.
  on_host->model->embed_tokens.requires_grad_(true);
  on_device->model->embed_tokens.requires_grad_(true);
  const ForwardResult trainable = forward_backward(*on_host, ids);
  expect_close(forward_backward(*on_device, ids.cuda()), trainable);
  EXPECT_TRUE(trainable.grads.at("model.embed_tokens.weight").is_cpu());
}

TEST_F(HostEmbeddingsCuda, MovingTheTableKeepsItsValues) {
  auto cpu = t::random_model(t::small_config("llama"), 13);
  auto model = cuda_copy(*cpu, EmbeddingPlacement::kDevice);
  torch::NoGradGuard no_grad;
  const at::Tensor ids = batch_ids(cpu->config().vocab_size);
  const at::Tensor reference = model->forward({.input_ids = ids}).cpu();
  model->set_embeddings_on_host(true);
  EXPECT_TRUE(model->model->embed_tokens.is_pinned());
  EXPECT_TRUE(model->named_parameters()["model.embed_tokens.weight"].is_cpu());
  EXPECT_LT(t::max_abs_diff(model->forward({.input_ids = ids}).cpu(), reference), 1e-6);
  model->set_embeddings_on_host(false);
  EXPECT_TRUE(model->model->embed_tokens.is_cuda());
  EXPECT_LT(t::max_abs_diff(model->forward({.input_ids = ids}).cpu(), reference), 1e-6);
}

TEST_F(HostEmbeddingsCuda, QuantizedLoaderReadsTheTableIntoPinnedHostMemory) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("m");
  write_tiny_model({.arch = "llama", .preset = "micro", .seed = 2}, dir);
  QuantizedLoadOptions options{
      .dtype = at::kFloat, .device = at::kCUDA, .quant = {QuantType::kNF4, 64, true}};
  auto reference = load_quantized_causal_lm(dir, options);
  options.embeddings = EmbeddingPlacement::kHost;
  auto model = load_quantized_causal_lm(dir, options);
  EXPECT_TRUE(model->model->embed_tokens.is_pinned());
  torch::NoGradGuard no_grad;
  const at::Tensor ids = at::tensor({1, 40, 7, 99, 12, 300}, at::kLong).view({1, -1});
  EXPECT_LT(t::max_abs_diff(model->forward({.input_ids = ids}).cpu(),
                            reference->forward({.input_ids = ids}).cpu()),
            1e-5);
}

}  // namespace
}  // namespace qtrain

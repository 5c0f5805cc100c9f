// Gemma 2, Gemma 3 and Phi-3 through the paths training takes: packed rows (cu_seqlens; gemma2's
// soft-capped attention goes through the eager per-segment path, gemma3's through varlen
// attention, windows and RoPE bases per layer) give each row's own forward; NF4 quantize-on-load
// wraps the fused Phi-3 projections and a LoRA step on the 4-bit base lowers the loss.
#include "models/hf_loader.h"
#include "models/quantized_loader.h"
#include "models/tiny_model.h"
#include "peft/apply_lora.h"
#include "tests/models/random_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <map>
#include <string>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

ModelConfig gemma2_config() {
  ModelConfig c = tiny_model_config("gemma2", "micro");
  c.vocab_size = 97;
  c.sliding_window = 4;
  c.attn_logit_softcapping = 2.0;
  c.final_logit_softcapping = 3.0;
  return c;
}

// Three layers: sliding (RoPE base 1e4), full (1e6), sliding.
ModelConfig gemma3_config() {
  TinyModelOptions o;
  o.arch = "gemma3";
  o.preset = "micro";
  o.num_hidden_layers = 3;
  ModelConfig c = tiny_model_config(o);
  c.sliding_window = 4;
  return c;
}

TEST(FamilyDecoder, PackedRowsEqualEachRowAlone) {
  for (const ModelConfig& config :
       {gemma2_config(), gemma3_config(), tiny_model_config("phi3", "micro")}) {
    SCOPED_TRACE(config.model_type);
    ModelConfig c = config;
    c.vocab_size = 97;
    auto model = t::random_model(c, 7);
    const at::Tensor a = at::randint(97, {1, 9}, at::kLong);
    const at::Tensor b = at::randint(97, {1, 7}, at::kLong);
    torch::NoGradGuard no_grad;
    const at::Tensor alone = at::cat(
        {model->forward({.input_ids = a}), model->forward({.input_ids = b})}, 1);  // [1, 16, V]
    ForwardInputs packed;
    packed.input_ids = at::cat({a, b}, 1);
    packed.position_ids = at::cat({at::arange(9), at::arange(7)}).unsqueeze(0);
    packed.cu_seqlens = at::tensor({0, 9, 16}, at::kInt);
    const double diff = t::max_abs_diff(model->forward(packed), alone);
    EXPECT_LE(diff, 1e-5);
    // The window matters: without segments the second row would see the first.
    EXPECT_GT(t::max_abs_diff(model->forward({.input_ids = packed.input_ids}), alone), 1e-3);
  }
}

// Checkpointed layers are recomputed with the RoPE of their own layer type.
TEST(FamilyDecoder, Gemma3CheckpointedLayersGiveTheSameGradients) {
  ModelConfig c = gemma3_config();
  c.vocab_size = 97;
  auto model = t::random_model(c, 5);
  model->train();
  const at::Tensor ids = at::randint(97, {2, 10}, at::kLong);
  auto gradients = [&](bool checkpointing) {
    model->set_gradient_checkpointing(checkpointing);
    model->zero_grad();
    const at::Tensor logits = model->forward({.input_ids = ids});
    at::cross_entropy_loss(logits.flatten(0, 1), ids.roll(-1, 1).flatten()).backward();
    std::map<std::string, at::Tensor> grads;
    for (const auto& item : model->named_parameters())
      grads[item.key()] = item.value().grad().clone();
    return grads;
  };
  const auto plain = gradients(false);
  const auto recomputed = gradients(true);
  ASSERT_EQ(plain.size(), recomputed.size());
  for (const auto& [name, grad] : plain) {
    EXPECT_LE(t::max_abs_diff(recomputed.at(name), grad), 1e-6) << name;
  }
  EXPECT_GT(plain.at("model.layers.1.self_attn.k_norm.weight").abs().max().item<double>(), 0);
}

TEST(FamilyDecoder, Nf4BaseTrainsALoraStep) {
  for (const std::string arch : {"gemma2", "gemma3", "phi3"}) {
    SCOPED_TRACE(arch);
    t::ScratchDir scratch("qtrain-family-nf4");
    TinyModelOptions o;
    o.arch = arch;
    o.preset = "micro";
    o.seed = 2;
    write_tiny_model(o, scratch.file("m"));
    QuantizedLoadOptions q;
    q.dtype = at::kFloat;
    auto model = load_quantized_causal_lm(scratch.file("m"), q);
    std::set<std::string> names;
    for (const auto& [name, slot] : model->named_linears()) names.insert(name);
    EXPECT_EQ(names.count("model.layers.0.self_attn.qkv_proj"), arch == "phi3" ? 1u : 0u);
    EXPECT_EQ(names.count("model.layers.0.mlp.gate_up_proj"), arch == "phi3" ? 1u : 0u);

    LoraConfig lora;
    lora.r = 4;
    lora.alpha = 8;
    lora.dtype = at::kFloat;
    lora.target_modules = {"all-linear"};
    auto adapters = apply_lora(*model, lora, 3);
    std::vector<at::Tensor> params;
    for (const auto& [name, adapter] : adapters) {
      for (auto& [n, tensor] : adapter->adapter_tensors()) params.push_back(tensor);
    }
    model->train();
    const at::Tensor ids = at::randint(model->config().vocab_size, {2, 12}, at::kLong);
    auto loss_of = [&] {
      const at::Tensor logits = model->forward({.input_ids = ids});
      return at::cross_entropy_loss(logits.slice(1, 0, -1).reshape({-1, logits.size(-1)}),
                                    ids.slice(1, 1).reshape({-1}));
    };
    const at::Tensor before = loss_of();
    before.backward();
    {
      torch::NoGradGuard no_grad;
      for (auto& p : params) p.sub_(p.grad() * 0.5);
    }
    EXPECT_LT(loss_of().item<double>(), before.item<double>());
  }
}

}  // namespace
}  // namespace qtrain

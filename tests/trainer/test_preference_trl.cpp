// DPO and ORPO against TRL (trl 1.16, pinned in scripts/requirements-test.txt) on the same tiny
// model, adapter and batch: TRL tokenizes the same JSONL pairs, wraps the same LoRA (loaded from
// the adapter qtrain saved) and computes its loss, metrics and gradients on one batch of every
// pair; qtrain's preference_micro_batch must give the same token ids, loss and metrics within
// 1e-5 and LoRA gradients within 1e-5 (float32). Covers DPO's sigmoid loss, its label-smoothed
// (conservative) form and ORPO.
#include "data/batcher.h"
#include "data/preference_pairs.h"
#include "data/tokenizer.h"
#include "models/hf_loader.h"
#include "models/llama.h"
#include "models/tiny_model.h"
#include "peft/apply_lora.h"
#include "peft/peft_files.h"
#include "tests/support/test_support.h"
#include "trainer/preference_loss.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace qtrain {
namespace {

class PreferenceVsTrl : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::reference_python().empty()) GTEST_SKIP() << "no reference python";
    write_tiny_model({.arch = "llama", .preset = "micro", .seed = 2}, model_dir_);
    testing::write_file(
        pairs_,
        R"({"prompt": "Name a colour.", "chosen": " Blue is a colour.", "rejected": " Seven."}
{"prompt": "What do cats say?", "chosen": " Cats say meow.", "rejected": " Cats bark loudly at night."}
{"prompt": "Count to three.", "chosen": " One, two, three.", "rejected": " Three."}
)");
  }

  struct Ours {
    double loss = 0;
    std::map<std::string, double> metrics;
    std::map<std::string, at::Tensor> grads;
    std::vector<std::vector<int64_t>> ids;
  };

  Ours run_ours(const PreferenceOptions& options) {
    auto model = load_causal_lm(model_dir_);
    LoraConfig lora;
    lora.r = 4;
    lora.alpha = 8;
    lora.target_modules = {"q_proj", "v_proj", "down_proj"};
    lora.dtype = at::kFloat;
    NamedAdapters adapters = apply_lora(*model, lora, 11);
    {
      at::NoGradGuard no_grad;
      at::manual_seed(5);
      for (auto& [module, adapter] : adapters) {
        for (auto& [name, tensor] : adapter->adapter_tensors()) {
          if (name.find("lora_B") != std::string::npos) tensor.normal_(0.0, 0.05);
        }
      }
    }
    save_peft_adapter(adapter_dir_, adapters, lora, model_dir_);
    auto tokenizer = load_tokenizer(model_dir_);
    ExampleOptions example_options;
    example_options.max_seq_len = 64;
    example_options.add_bos = tokenizer->add_bos_default();
    PreferencePairs pairs = load_preference_pairs(pairs_, {}, *tokenizer, example_options);
    Batcher batcher(
        pairs.chosen,
        {.micro_batch_size = 3, .seq_len = 64, .shuffle = false, .pad_id = padding_id(*tokenizer)},
        pairs.rejected);
    const Batch batch = batcher.next();
    model->train();
    const PreferenceLoss loss = preference_micro_batch(
        *model, {.input_ids = batch.input_ids, .position_ids = batch.position_ids}, batch, options);
    (loss.loss_sum / batch.pairs).backward();
    Ours out;
    out.loss = loss.loss_sum.item<double>() / batch.pairs;
    const auto names = preference_metric_names(options.objective);
    for (size_t m = 0; m < names.size(); ++m) {
      out.metrics[names[m]] =
          loss.metric_sums[static_cast<int64_t>(m)].item<double>() / batch.pairs;
    }
    for (auto& [module, adapter] : adapters) {
      for (auto& [name, tensor] : adapter->adapter_tensors()) {
        out.grads[module + "." + name] = tensor.grad().clone();
      }
    }
    for (int64_t r = 0; r < batch.input_ids.size(0); ++r) {
      const int64_t length = batch.row_lengths[static_cast<size_t>(r)];
      const at::Tensor row = batch.input_ids[r].narrow(0, 0, length);
      out.ids.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + length);
    }
    return out;
  }

  nlohmann::json run_trl(const std::string& objective, double beta, double smoothing) {
    std::string output;
    const int code =
        testing::run_reference_script("trl_preference.py",
                                      {model_dir_, adapter_dir_, pairs_, objective,
                                       std::to_string(beta), std::to_string(smoothing)},
                                      &output);
    EXPECT_EQ(code, 0) << output;
    const size_t start = output.rfind("\n{");
    return nlohmann::json::parse(start == std::string::npos ? output : output.substr(start + 1));
  }

  void compare(const PreferenceOptions& options, double trl_beta, double smoothing,
               const std::map<std::string, std::string>& metric_names) {
    const Ours ours = run_ours(options);
    const nlohmann::json trl = run_trl(options.objective, trl_beta, smoothing);
    std::vector<std::vector<int64_t>> trl_ids = trl["ids"], our_ids = ours.ids;
    std::sort(trl_ids.begin(), trl_ids.end());
    std::sort(our_ids.begin(), our_ids.end());
    EXPECT_EQ(our_ids, trl_ids) << "the pairs were tokenized differently";
    EXPECT_NEAR(ours.loss, trl["loss"].get<double>(), 1e-5);
    std::printf("%s: loss %.8f (TRL %.8f)\n", options.objective.c_str(), ours.loss,
                trl["loss"].get<double>());
    for (const auto& [ours_name, trl_name] : metric_names) {
      ASSERT_TRUE(trl["metrics"].contains(trl_name)) << trl["metrics"].dump();
      EXPECT_NEAR(ours.metrics.at(ours_name), trl["metrics"][trl_name].get<double>(), 1e-5)
          << ours_name;
    }
    ASSERT_EQ(trl["grads"].size(), ours.grads.size());
    double largest = 0, worst = 0;
    for (const auto& [name, grad] : ours.grads) {
      ASSERT_TRUE(trl["grads"].contains(name)) << name;
      const std::vector<double> values = trl["grads"][name];
      const at::Tensor expected = at::tensor(values, at::kDouble).view(grad.sizes());
      EXPECT_LT(testing::max_abs_diff(grad, expected), 1e-5) << name;
      largest = std::max(largest, expected.abs().max().item<double>());
      worst = std::max(worst, testing::max_abs_diff(grad, expected));
    }
    std::printf("%s: largest |grad| %.3g, max |grad - TRL's| %.3g\n", options.objective.c_str(),
                largest, worst);
    EXPECT_GT(largest, 1e-3) << "the gradients are too small for the comparison to mean much";
  }

  testing::ScratchDir dir_{"qtrain-pref-trl"};
  std::string model_dir_ = dir_.file("model"), adapter_dir_ = dir_.file("adapter"),
              pairs_ = dir_.file("pairs.jsonl");
};

const std::map<std::string, std::string> kRewardMetrics = {
    {"rewards/chosen", "rewards/chosen"},   {"rewards/rejected", "rewards/rejected"},
    {"rewards/margins", "rewards/margins"}, {"rewards/accuracies", "rewards/accuracies"},
    {"logps/chosen", "logps/chosen"},       {"logps/rejected", "logps/rejected"}};

TEST_F(PreferenceVsTrl, DpoSigmoid) {
  compare({.objective = "dpo", .beta = 0.1}, 0.1, 0.0, kRewardMetrics);
}

TEST_F(PreferenceVsTrl, DpoLabelSmoothing) {
  // Conservative DPO, -(1 - eps) log sigmoid(b d) - eps log sigmoid(-b d), is linear in TRL's
  // sigmoid loss of the pairs as given and of the pairs with chosen and rejected swapped (which
  // turns d into -d): loss and gradients are (1 - eps) TRL(pairs) + eps TRL(swapped).
  const double eps = 0.2;
  const Ours ours = run_ours({.objective = "dpo", .beta = 0.1, .label_smoothing = eps});
  const nlohmann::json straight = run_trl("dpo", 0.1, 0.0);
  std::string swapped;
  for (
      const std::string& line :
      {std::string(
           R"({"prompt": "Name a colour.", "chosen": " Seven.", "rejected": " Blue is a colour."})"),
       std::string(
           R"({"prompt": "What do cats say?", "chosen": " Cats bark loudly at night.", "rejected": " Cats say meow."})"),
       std::string(
           R"({"prompt": "Count to three.", "chosen": " Three.", "rejected": " One, two, three."})")}) {
    swapped += line + "\n";
  }
  testing::write_file(pairs_, swapped);
  const nlohmann::json flipped = run_trl("dpo", 0.1, 0.0);
  EXPECT_NEAR(ours.loss,
              (1 - eps) * straight["loss"].get<double>() + eps * flipped["loss"].get<double>(),
              1e-5);
  EXPECT_NEAR(ours.metrics.at("rewards/margins"),
              straight["metrics"]["rewards/margins"].get<double>(), 1e-5);
  for (const auto& [name, grad] : ours.grads) {
    const std::vector<double> a = straight["grads"][name], b = flipped["grads"][name];
    const at::Tensor expected =
        (at::tensor(a, at::kDouble) * (1 - eps) + at::tensor(b, at::kDouble) * eps)
            .view(grad.sizes());
    EXPECT_LT(testing::max_abs_diff(grad, expected), 1e-5) << name;
  }
}

TEST_F(PreferenceVsTrl, Orpo) {
  auto metrics = kRewardMetrics;
  metrics.insert({{"nll_loss", "nll_loss"},
                  {"log_odds_ratio", "log_odds_ratio"},
                  {"log_odds_chosen", "log_odds_chosen"}});
  compare({.objective = "orpo", .lambda = 0.25}, 0.25, 0.0, metrics);
}

}  // namespace
}  // namespace qtrain

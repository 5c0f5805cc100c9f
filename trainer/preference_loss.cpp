#include "trainer/preference_loss.h"

#include "core/error.h"
#include "data/batcher.h"
#include "models/llama.h"
#include "peft/adapter_slot.h"
#include "trainer/chunked_loss.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <memory>
#include <vector>

namespace qtrain {
namespace {

// log(1 - e^x) for x < 0, without cancellation on either side of -ln 2.
at::Tensor log1mexp(const at::Tensor& x) {
  return at::where(x < -std::log(2.0), at::log1p(-at::exp(x)), at::log(-at::expm1(x)));
}

// The shared reward metrics: rewards [2P] (chosen then rejected), logps [2P].
std::vector<at::Tensor> reward_metrics(const at::Tensor& rewards, const at::Tensor& logps) {
  const auto halves = rewards.chunk(2);
  const auto lp = logps.chunk(2);
  return {halves[0].sum(),
          halves[1].sum(),
          (halves[0] - halves[1]).sum(),
          (halves[0] > halves[1]).to(at::kFloat).sum(),
          lp[0].sum(),
          lp[1].sum()};
}

// Switches every adapter of `model` off for its lifetime.
class AdaptersOff {
 public:
  explicit AdaptersOff(const CausalLM& model) {
    for (const auto& [name, slot] : model.named_linears()) {
      if (auto adapter = std::dynamic_pointer_cast<AdapterSlot>(slot);
          adapter && adapter->enabled()) {
        adapter->set_enabled(false);
        off_.push_back(adapter);
      }
    }
  }
  ~AdaptersOff() {
    for (const auto& adapter : off_) adapter->set_enabled(true);
  }
  AdaptersOff(const AdaptersOff&) = delete;
  AdaptersOff& operator=(const AdaptersOff&) = delete;

 private:
  std::vector<std::shared_ptr<AdapterSlot>> off_;
};

}  // namespace

std::vector<std::string> preference_metric_names(const std::string& objective) {
  std::vector<std::string> names = {"rewards/chosen",     "rewards/rejected", "rewards/margins",
                                    "rewards/accuracies", "logps/chosen",     "logps/rejected"};
  if (objective == "orpo") {
    names.insert(names.end(), {"nll_loss", "log_odds_ratio", "log_odds_chosen"});
  }
  return names;
}

PreferenceLoss dpo_loss(const at::Tensor& policy, const at::Tensor& reference, double beta,
                        double label_smoothing) {
  const at::Tensor ratios = policy - reference;  // [2P]
  const auto sides = ratios.chunk(2);
  const at::Tensor delta = (sides[0] - sides[1]) * beta;  // [P]
  at::Tensor per_pair = -at::log_sigmoid(delta) * (1 - label_smoothing);
  if (label_smoothing > 0) per_pair = per_pair - at::log_sigmoid(-delta) * label_smoothing;
  PreferenceLoss out;
  out.loss_sum = per_pair.sum();
  out.metric_sums = at::stack(reward_metrics(ratios.detach() * beta, policy.detach()));
  return out;
}

PreferenceLoss orpo_loss(const at::Tensor& mean_logps, const at::Tensor& chosen_nll,
                         double lambda) {
  const auto sides = mean_logps.chunk(2);
  const at::Tensor log_odds =
      (sides[0] - sides[1]) - (log1mexp(sides[0]) - log1mexp(sides[1]));  // [P]
  const at::Tensor ratio = at::log_sigmoid(log_odds);
  const double pairs = static_cast<double>(log_odds.size(0));
  PreferenceLoss out;
  out.loss_sum = chosen_nll * pairs - (ratio * lambda).sum();
  std::vector<at::Tensor> metrics =
      reward_metrics(mean_logps.detach() * lambda, mean_logps.detach());
  metrics.push_back(chosen_nll.detach() * pairs);
  metrics.push_back(ratio.detach().sum());
  metrics.push_back(log_odds.detach().sum());
  out.metric_sums = at::stack(metrics);
  return out;
}

SequenceLogProbs sequence_log_probs(const at::Tensor& hidden, LinearSlot& lm_head,
                                    const Batch& batch, bool with_chosen_nll, int64_t chunk_tokens,
                                    double final_logit_softcap) {
  const int64_t rows = batch.labels.size(0), length = batch.labels.size(1);
  if (batch.pairs <= 0 || rows != 2 * batch.pairs ||
      static_cast<int64_t>(batch.row_lengths.size()) != rows) {
    throw_error(ErrorKind::kInternal, "a preference objective needs a paired batch");
  }
  // Positions to score: the responses (labels), and for ORPO's NLL every real token of the
  // chosen rows after the first. `response` marks, in the scored positions' order, which are
  // response tokens.
  at::Tensor scored = batch.labels.clone();
  std::vector<uint8_t> response;
  {
    const int64_t* ids = batch.input_ids.data_ptr<int64_t>();
    int64_t* label = scored.data_ptr<int64_t>();
    const int64_t* original = batch.labels.data_ptr<int64_t>();
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 1; t < length; ++t) {
        const int64_t i = r * length + t;
        if (with_chosen_nll && r < batch.pairs && t < batch.row_lengths[r]) label[i] = ids[i];
        if (label[i] != kIgnoreLabel) response.push_back(original[i] != kIgnoreLabel);
      }
    }
  }
  const TokenCrossEntropy ce =
      chunked_token_cross_entropy(hidden, lm_head, scored, chunk_tokens, final_logit_softcap);
  const auto device = hidden.device();
  const at::Tensor is_response =
      at::tensor(std::vector<float>(response.begin(), response.end()), at::kFloat).to(device);
  const auto float_options = hidden.options().dtype(at::kFloat);
  SequenceLogProbs out;
  out.sum = at::zeros({rows}, float_options).index_add(0, ce.rows, -ce.values * is_response);
  out.tokens = at::zeros({rows}, float_options).index_add(0, ce.rows, is_response);
  if (with_chosen_nll) {
    const at::Tensor chosen = (ce.rows < batch.pairs).to(at::kFloat);
    out.chosen_nll = (ce.values * chosen).sum() / chosen.sum().clamp_min(1);
  }
  return out;
}

at::Tensor reference_log_probs(CausalLM& model, const ForwardInputs& inputs, const Batch& batch,
                               int64_t chunk_tokens) {
  torch::NoGradGuard no_grad;
  AdaptersOff off(model);
  const at::Tensor hidden = model.hidden_states(inputs);
  return sequence_log_probs(hidden, *model.lm_head, batch, false, chunk_tokens,
                            model.config().final_logit_softcapping.value_or(0.0))
      .sum;
}

PreferenceLoss preference_micro_batch(CausalLM& model, const ForwardInputs& inputs,
                                      const Batch& batch, const PreferenceOptions& options,
                                      const at::Tensor& reference) {
  const double cap = model.config().final_logit_softcapping.value_or(0.0);
  if (options.objective == "orpo") {
    const at::Tensor hidden = model.hidden_states(inputs);
    const SequenceLogProbs policy =
        sequence_log_probs(hidden, *model.lm_head, batch, true, options.loss_chunk_tokens, cap);
    return orpo_loss(policy.sum / policy.tokens.clamp_min(1), policy.chosen_nll, options.lambda);
  }
  const at::Tensor ref = reference.defined()
                             ? reference
                             : reference_log_probs(model, inputs, batch, options.loss_chunk_tokens);
  const at::Tensor hidden = model.hidden_states(inputs);
  const SequenceLogProbs policy =
      sequence_log_probs(hidden, *model.lm_head, batch, false, options.loss_chunk_tokens, cap);
  return dpo_loss(policy.sum, ref, options.beta, options.label_smoothing);
}

}  // namespace qtrain

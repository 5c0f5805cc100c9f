// Preference objectives on pairs of sequences (training.objective dpo | orpo), as TRL computes
// them, from batches whose rows are [P chosen..., their P rejected...] (data/batcher.h paired
// mode):
//
//   DPO   logp = the summed log-probability of a side's response tokens; with the reference's
//         (the same base with the adapters off) ref_logp, delta = (logp_c - ref_c) -
//         (logp_r - ref_r) and loss = -(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta
//         delta) (eps = training.dpo_label_smoothing; 0: TRL's sigmoid loss, > 0 its
//         conservative form). Rewards beta (logp - ref_logp).
//   ORPO  logp = the mean log-probability of a side's response tokens; log_odds = (logp_c -
//         logp_r) - (log(1 - e^logp_c) - log(1 - e^logp_r)); loss = NLL(chosen) - lambda
//         log sigmoid(log_odds), where NLL is the mean cross-entropy of the chosen sequences'
//         tokens, prompt included (TRL's ORPOTrainer). Rewards lambda logp.
//
// Losses and metrics come back summed over the micro-batch's pairs (ORPO's NLL: its mean times P),
// so the trainer divides by the pairs of the whole step: micro-batches and ranks add up to one
// batch, as HF's Trainer averages them.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

class CausalLM;
class LinearSlot;
struct Batch;
struct ForwardInputs;

struct PreferenceOptions {
  std::string objective = "dpo";  // dpo | orpo
  double beta = 0.1;              // dpo: training.dpo_beta
  double label_smoothing = 0;     // dpo: training.dpo_label_smoothing
  double lambda = 0.1;            // orpo: training.orpo_lambda
  int64_t loss_chunk_tokens = 1024;
};

// The metrics' names, in the order of PreferenceLoss::metric_sums:
// rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen,
// logps/rejected, and for orpo nll_loss, log_odds_ratio, log_odds_chosen.
std::vector<std::string> preference_metric_names(const std::string& objective);

struct PreferenceLoss {
  at::Tensor loss_sum;     // scalar float32: summed over pairs; differentiable
  at::Tensor metric_sums;  // [M] float32, detached: each metric summed over pairs
};

// policy, reference [2P] float32 summed response log-probabilities (chosen then rejected).
PreferenceLoss dpo_loss(const at::Tensor& policy, const at::Tensor& reference, double beta,
                        double label_smoothing);
// mean_logps [2P] mean response log-probabilities; chosen_nll scalar: the mean cross-entropy over
// the chosen sequences' tokens.
PreferenceLoss orpo_loss(const at::Tensor& mean_logps, const at::Tensor& chosen_nll, double lambda);

// Per-row sums over a paired batch's positions: hidden [R, T, H], labels [R, T] on the host ->
// {response log-probability sum [R], response tokens [R]} float32 on hidden's device,
// differentiable through hidden.
struct SequenceLogProbs {
  at::Tensor sum;
  at::Tensor tokens;
  at::Tensor chosen_nll;  // orpo only: scalar mean cross-entropy of the chosen rows' tokens
};
SequenceLogProbs sequence_log_probs(const at::Tensor& hidden, LinearSlot& lm_head,
                                    const Batch& batch, bool with_chosen_nll, int64_t chunk_tokens,
                                    double final_logit_softcap);

// The reference log-probabilities of a paired batch [2P] (summed responses): the model's forward
// pass with its adapters switched off, without gradients.
at::Tensor reference_log_probs(CausalLM& model, const ForwardInputs& inputs, const Batch& batch,
                               int64_t chunk_tokens);

// One micro-batch's objective: the policy forward pass (with gradients when enabled) and, for
// DPO, `reference` [2P] when given (precomputed) or reference_log_probs.
PreferenceLoss preference_micro_batch(CausalLM& model, const ForwardInputs& inputs,
                                      const Batch& batch, const PreferenceOptions& options,
                                      const at::Tensor& reference = {});

}  // namespace qtrain

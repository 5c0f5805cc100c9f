#include "trainer/preference_eval.h"

#include "data/batcher.h"
#include "models/llama.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

namespace qtrain {
namespace {

Batcher pair_batcher(const std::vector<Example>& chosen, const std::vector<Example>& rejected,
                     int64_t micro_batch_size, int64_t max_seq_len, int64_t pad_id) {
  return Batcher(chosen,
                 {.micro_batch_size = micro_batch_size,
                  .seq_len = max_seq_len,
                  .packing = false,
                  .seed = 0,
                  .shuffle = false,
                  .pad_id = pad_id},
                 rejected);
}

ForwardInputs inputs_on(const Batch& batch, const c10::Device& device) {
  return {.input_ids = batch.input_ids.to(device), .position_ids = batch.position_ids.to(device)};
}

}  // namespace

PreferenceEvalSums evaluate_preference(CausalLM& model, const std::vector<Example>& chosen,
                                       const std::vector<Example>& rejected,
                                       int64_t micro_batch_size, int64_t max_seq_len,
                                       int64_t pad_id, int64_t max_batches,
                                       const PreferenceOptions& options, int64_t shard,
                                       int64_t num_shards, bool lockstep) {
  PreferenceEvalSums out;
  out.metric_sums.assign(preference_metric_names(options.objective).size(), 0.0);
  if (chosen.empty()) return out;
  torch::NoGradGuard no_grad;
  model.eval();
  Batcher batcher = pair_batcher(chosen, rejected, micro_batch_size, max_seq_len, pad_id);
  int64_t batches = batcher.batches_per_epoch();
  if (max_batches > 0) batches = std::min(batches, max_batches);
  const auto device = model.model->embed_tokens.device();
  Batch filler;
  int64_t mine = 0;
  for (int64_t i = 0; i < batches; ++i) {
    Batch batch = batcher.next();
    if (i % num_shards != shard) {
      if (lockstep && !filler.input_ids.defined()) filler = batch;
      continue;
    }
    ++mine;
    const PreferenceLoss loss =
        preference_micro_batch(model, inputs_on(batch, device), batch, options);
    const at::Tensor host =
        at::cat({loss.loss_sum.view({1}), loss.metric_sums}).to(at::kDouble).cpu();
    out.loss_sum += host[0].item<double>();
    for (size_t m = 0; m < out.metric_sums.size(); ++m) {
      out.metric_sums[m] += host[static_cast<int64_t>(m) + 1].item<double>();
    }
    out.pairs += batch.pairs;
  }
  for (; lockstep && mine < (batches + num_shards - 1) / num_shards; ++mine) {
    preference_micro_batch(model, inputs_on(filler, device), filler, options);
  }
  model.train();
  return out;
}

std::vector<std::vector<double>> reference_log_probs_of(
    CausalLM& model, const std::vector<Example>& chosen, const std::vector<Example>& rejected,
    int64_t micro_batch_size, int64_t max_seq_len, int64_t pad_id, int64_t chunk_tokens) {
  std::vector<std::vector<double>> out(2, std::vector<double>(chosen.size(), 0.0));
  if (chosen.empty()) return out;
  model.eval();
  Batcher batcher = pair_batcher(chosen, rejected, micro_batch_size, max_seq_len, pad_id);
  const auto device = model.model->embed_tokens.device();
  for (int64_t i = 0, n = batcher.batches_per_epoch(); i < n; ++i) {
    const Batch batch = batcher.next();
    const at::Tensor ref = reference_log_probs(model, inputs_on(batch, device), batch, chunk_tokens)
                               .to(at::kDouble)
                               .cpu();
    for (int64_t p = 0; p < batch.pairs; ++p) {
      const int64_t id = batch.example_ids[static_cast<size_t>(p)];
      out[0][static_cast<size_t>(id)] = ref[p].item<double>();
      out[1][static_cast<size_t>(id)] = ref[batch.pairs + p].item<double>();
    }
  }
  model.train();
  return out;
}

}  // namespace qtrain

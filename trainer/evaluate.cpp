#include "trainer/evaluate.h"

#include "data/batcher.h"
#include "models/llama.h"
#include "trainer/causal_lm_loss.h"
#include "trainer/chunked_loss.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>

namespace qtrain {

EvalResult evaluate(CausalLM& model, const std::vector<Example>& examples, int64_t micro_batch_size,
                    int64_t max_seq_len, int64_t pad_id, int64_t max_batches, int64_t shard,
                    int64_t num_shards, int64_t loss_chunk_tokens, bool lockstep) {
  EvalResult result;
  if (examples.empty()) return result;
  torch::NoGradGuard no_grad;
  model.eval();
  Batcher batcher(examples, {.micro_batch_size = micro_batch_size,
                             .seq_len = max_seq_len,
                             .packing = false,
                             .seed = 0,
                             .shuffle = false,
                             .pad_id = pad_id});
  int64_t batches = batcher.batches_per_epoch();
  if (max_batches > 0) batches = std::min(batches, max_batches);
  double loss_sum = 0;
  const auto device = model.model->embed_tokens.device();
  Batch filler;  // lockstep: another shard's batch, run without counting
  int64_t mine = 0;
  for (int64_t i = 0; i < batches; ++i) {
    Batch batch = batcher.next();
    if (i % num_shards != shard) {
      if (lockstep && !filler.input_ids.defined()) filler = batch;
      continue;
    }
    ++mine;
    const at::Tensor hidden = model.hidden_states(
        {.input_ids = batch.input_ids.to(device), .position_ids = batch.position_ids.to(device)});
    loss_sum += chunked_causal_lm_loss_sum(hidden, *model.lm_head, batch.labels, loss_chunk_tokens,
                                           model.config().final_logit_softcapping.value_or(0.0))
                    .item<double>();
    result.tokens += count_loss_tokens(batch.labels);
  }
  for (; lockstep && mine < (batches + num_shards - 1) / num_shards; ++mine) {
    model.hidden_states(
        {.input_ids = filler.input_ids.to(device), .position_ids = filler.position_ids.to(device)});
  }
  model.train();
  result.loss_sum = loss_sum;
  if (result.tokens > 0) {
    result.loss = loss_sum / static_cast<double>(result.tokens);
    result.perplexity = std::exp(result.loss);
  }
  return result;
}

}  // namespace qtrain

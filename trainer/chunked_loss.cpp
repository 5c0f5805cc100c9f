#include "trainer/chunked_loss.h"

#include "core/error.h"
#include "data/examples.h"
#include "models/linear.h"

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace qtrain {
namespace {

// Where the loss applies: rows index hidden.flatten(0, 1), targets the next tokens; both [N]
// int64 on hidden's device.
struct LossPositions {
  at::Tensor rows;
  at::Tensor targets;
};

// labels [B, T] on the host -> the N positions b * T + t (t < T - 1) whose label[b, t + 1] is not
// kIgnoreLabel, with that label. One pinned buffer and one asynchronous copy on CUDA.
LossPositions loss_positions(const at::Tensor& labels, int64_t vocab, const c10::Device& device) {
  const at::Tensor host = labels.to(at::kLong).contiguous();
  const int64_t batch = host.size(0), length = host.size(1);
  const int64_t* label = host.data_ptr<int64_t>();
  int64_t count = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t + 1 < length; ++t) count += label[b * length + t + 1] != kIgnoreLabel;
  }
  at::Tensor buffer =
      at::empty({2, count}, at::TensorOptions().dtype(at::kLong).pinned_memory(device.is_cuda()));
  int64_t* rows = buffer.data_ptr<int64_t>();
  int64_t* targets = rows + count;
  int64_t n = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t + 1 < length; ++t) {
      const int64_t target = label[b * length + t + 1];
      if (target == kIgnoreLabel) continue;
      if (target < 0 || target >= vocab) {
        throw_error(ErrorKind::kInternal,
                    "label " + std::to_string(target) + " at [" + std::to_string(b) + ", " +
                        std::to_string(t + 1) + "] is outside the vocabulary [0, " +
                        std::to_string(vocab) + ")",
                    {.tensor = "labels"});
      }
      rows[n] = b * length + t;
      targets[n] = target;
      ++n;
    }
  }
  if (device.is_cuda()) buffer = buffer.to(device, /*non_blocking=*/true);
  return {buffer[0], buffer[1]};
}

// Rows of logits turned into float32 at a time when lm_head's output is another dtype: the
// float32 working copy is one block, not the chunk (128 rows at V = 128256 are 63 MiB).
constexpr int64_t kFloatBlockRows = 128;

// logits [R, V] float32, overwritten; targets [R] in [0, V) -> [R] float32 cross-entropies
// logsumexp(logits[r]) - logits[r, targets[r]]. With `gradient` the logits become that loss's
// gradient, softmax - onehot(targets); otherwise they hold exp(logits - rowmax). No [R, V]
// temporary: max, exp and normalisation all run in place.
at::Tensor cross_entropy_in_place(at::Tensor& logits, const at::Tensor& targets, bool gradient) {
  const at::Tensor index = targets.unsqueeze(1);            // [R, 1]
  const at::Tensor target_logit = logits.gather(1, index);  // [R, 1]
  const at::Tensor row_max = at::amax(logits, {1}, true);   // [R, 1]
  logits.sub_(row_max).exp_();
  const at::Tensor row_sum = logits.sum(1, true);  // [R, 1]
  if (gradient) {
    logits.div_(row_sum);
    logits.scatter_add_(1, index, at::full_like(target_logit, -1.0));
  }
  return (row_max + row_sum.log() - target_logit).squeeze(1);
}

// out [C, V] lm_head's output (any floating dtype, no gradient tracked through these writes),
// targets [C] -> [C] float32: each row's cross-entropy. With `gradient`, out is overwritten with
// d loss / d out (softmax - onehot, computed in float32, rounded to out's dtype); otherwise its
// values are left undefined. Float32 runs in place on out itself; other dtypes go through a
// float32 copy of kFloatBlockRows rows at a time.
at::Tensor cross_entropy_of_logits(at::Tensor out, const at::Tensor& targets, bool gradient) {
  if (out.scalar_type() == at::kFloat) return cross_entropy_in_place(out, targets, gradient);
  std::vector<at::Tensor> pieces;
  const int64_t rows = out.size(0);
  for (int64_t start = 0; start < rows; start += kFloatBlockRows) {
    const int64_t r = std::min(kFloatBlockRows, rows - start);
    at::Tensor block = out.narrow(0, start, r);
    at::Tensor work = block.to(at::kFloat);
    pieces.push_back(cross_entropy_in_place(work, targets.narrow(0, start, r), gradient));
    if (gradient) block.copy_(work);
  }
  return pieces.empty() ? at::zeros({0}, out.options().dtype(at::kFloat)) : at::cat(pieces);
}

// As cross_entropy_of_logits, of the soft-capped logits z = cap * tanh(out / cap) (cap > 0),
// computed in float32 kFloatBlockRows rows at a time. With `gradient`, out is overwritten with
// d loss / d out = (softmax(z) - onehot) * (1 - tanh(out / cap)^2): tanh's derivative needs the
// block's tanh kept beside its softmax, one float32 [min(C, 128), V] block more than the uncapped
// path (two blocks when out is not float32: the working copy and the tanh).
at::Tensor capped_cross_entropy_of_logits(at::Tensor out, const at::Tensor& targets, bool gradient,
                                          double cap) {
  const bool in_place = out.scalar_type() == at::kFloat;
  if (!gradient && in_place) {
    out.div_(cap).tanh_().mul_(cap);
    return cross_entropy_in_place(out, targets, /*gradient=*/false);
  }
  std::vector<at::Tensor> pieces;
  const int64_t rows = out.size(0);
  for (int64_t start = 0; start < rows; start += kFloatBlockRows) {
    const int64_t r = std::min(kFloatBlockRows, rows - start);
    at::Tensor block = out.narrow(0, start, r);
    const at::Tensor block_targets = targets.narrow(0, start, r);
    if (!gradient) {
      at::Tensor work = block.to(at::kFloat);
      work.div_(cap).tanh_().mul_(cap);
      pieces.push_back(cross_entropy_in_place(work, block_targets, /*gradient=*/false));
      continue;
    }
    at::Tensor squashed = at::div(block.to(at::kFloat), cap).tanh_();  // [r, V] tanh(out / cap)
    at::Tensor work = in_place ? block.copy_(squashed).mul_(cap) : squashed * cap;  // z [r, V]
    pieces.push_back(cross_entropy_in_place(work, block_targets, /*gradient=*/true));
    work.mul_(squashed.square_().neg_().add_(1.0));
    if (!in_place) block.copy_(work);
  }
  return pieces.empty() ? at::zeros({0}, out.options().dtype(at::kFloat)) : at::cat(pieces);
}

// The uncapped or soft-capped (cap > 0) cross-entropy of each row of lm_head's output: [C].
at::Tensor head_output_cross_entropy(at::Tensor out, const at::Tensor& targets, bool gradient,
                                     double cap) {
  return cap > 0 ? capped_cross_entropy_of_logits(std::move(out), targets, gradient, cap)
                 : cross_entropy_of_logits(std::move(out), targets, gradient);
}

// h [C, H], targets [C] -> [C] float32: the cross-entropy of each row of lm_head(h), forward
// only. Only this chunk's logits exist, in the model's dtype (and one float32 block of them).
at::Tensor chunk_token_losses(LinearSlot& lm_head, const at::Tensor& h, const at::Tensor& targets,
                              double cap) {
  return head_output_cross_entropy(lm_head.forward(h).detach(), targets, /*gradient=*/false, cap);
}

int64_t chunk_size(int64_t chunk_tokens, int64_t n) {
  return chunk_tokens > 0 ? std::min(chunk_tokens, n) : n;
}

// rows [N, H], targets [N] -> scalar float32 on rows' device, chunk by chunk, forward only.
at::Tensor forward_chunks(LinearSlot& lm_head, const at::Tensor& rows, const at::Tensor& targets,
                          int64_t chunk_tokens, double cap) {
  at::Tensor total = at::zeros({}, rows.options().dtype(at::kFloat));
  const int64_t n = rows.size(0);
  const int64_t chunk = chunk_size(chunk_tokens, n);
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t c = std::min(chunk, n - start);
    total.add_(
        chunk_token_losses(lm_head, rows.narrow(0, start, c), targets.narrow(0, start, c), cap)
            .sum());
  }
  return total;
}

struct LossCall : torch::CustomClassHolder {
  LinearSlot* lm_head = nullptr;
  int64_t chunk_tokens = 0;
  double softcap = 0;  // final logit soft cap; 0: none
  bool rows_need_grad = false;
  std::vector<at::Tensor> params;  // lm_head's parameters that require grad
};

// One chunk: its rows' losses and the gradients of their sum.
struct ChunkResult {
  at::Tensor loss;                // [C] float32
  at::Tensor grad_h;              // [C, H], undefined unless h requires grad
  std::vector<at::Tensor> grads;  // one per trainable parameter of lm_head, undefined if unused
};

// h [C, H] (detached; requires grad when the hidden states need a gradient), targets [C].
// lm_head runs once with autograd; the logits' gradient, softmax - onehot in float32, is written
// over lm_head's own output (a detached alias: no linear, LoRA, QA-LoRA or quantized backward
// reads the output's values, and the shared version counter makes autograd refuse, not
// miscompute, a head whose backward would) and pushed back through lm_head as grad_outputs.
// [C, V] memory: the output, plus one float32 block when it is not float32, plus whatever
// lm_head's own backward allocates (a LoRA's scaled copy of the gradient).
ChunkResult chunk_loss_and_grads(LinearSlot& lm_head, const at::Tensor& h,
                                 const at::Tensor& targets, const std::vector<at::Tensor>& params,
                                 double cap) {
  ChunkResult result;
  at::Tensor out;
  {
    at::AutoGradMode grad_on(true);
    out = lm_head.forward(h);  // [C, V]
  }
  at::Tensor grad_out = out.detach();
  result.loss = head_output_cross_entropy(grad_out, targets, /*gradient=*/true, cap);
  torch::autograd::variable_list inputs;
  if (h.requires_grad()) inputs.push_back(h);
  inputs.insert(inputs.end(), params.begin(), params.end());
  auto grads = torch::autograd::grad({out}, inputs, {grad_out}, /*retain_graph=*/false,
                                     /*create_graph=*/false, /*allow_unused=*/true);
  auto first_param = grads.begin();
  if (h.requires_grad()) result.grad_h = std::move(*first_param++);
  result.grads.assign(std::make_move_iterator(first_param), std::make_move_iterator(grads.end()));
  return result;
}

// Inputs: rows [N, H], targets [N], the call, lm_head's trainable parameters (passed so the loss
// requires grad even when rows do not, e.g. LoRA on lm_head alone). Forward computes the loss and
// every gradient (the loss ends the graph: its incoming gradient is a scalar) and saves them:
// grad_rows [N, H] in rows' dtype, each parameter's gradient summed over the chunks in float32
// (or float64). Backward scales them by the incoming gradient and rounds the parameters' once, so
// autograd accumulates each parameter's .grad (and fires its hooks) once per pass.
class ChunkedLinearCrossEntropy : public torch::autograd::Function<ChunkedLinearCrossEntropy> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& rows,
                            const at::Tensor& targets, c10::intrusive_ptr<LossCall> call,
                            at::TensorList params) {
    const int64_t n = rows.size(0);
    const size_t num_params = call->params.size();
    at::Tensor total = at::zeros({}, rows.options().dtype(at::kFloat));
    at::Tensor grad_rows = call->rows_need_grad ? at::empty_like(rows) : at::Tensor();
    std::vector<at::Tensor> param_sums(num_params);
    const int64_t chunk = chunk_size(call->chunk_tokens, n);
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t c = std::min(chunk, n - start);
      const at::Tensor h = rows.narrow(0, start, c).detach().requires_grad_(call->rows_need_grad);
      ChunkResult r = chunk_loss_and_grads(*call->lm_head, h, targets.narrow(0, start, c),
                                           call->params, call->softcap);
      total.add_(r.loss.sum());
      if (call->rows_need_grad) grad_rows.narrow(0, start, c).copy_(r.grad_h);
      for (size_t p = 0; p < num_params; ++p) {
        const at::Tensor& g = r.grads[p];
        if (!g.defined()) continue;
        if (param_sums[p].defined()) {
          param_sums[p].add_(g);
        } else {
          param_sums[p] = g.to(at::promote_types(g.scalar_type(), at::kFloat),
                               /*non_blocking=*/false, /*copy=*/true);
        }
      }
    }
    // Saved variables, not saved_data: autograd frees them after a backward without
    // retain_graph and refuses a second one, as for any graph.
    std::vector<at::Tensor> saved = {grad_rows};
    saved.insert(saved.end(), param_sums.begin(), param_sums.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["call"] = at::IValue::make_capsule(call);
    return total;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (at::GradMode::is_enabled()) {
      throw_error(ErrorKind::kInternal,
                  "chunked loss: its gradients are computed in forward and cannot be "
                  "differentiated again (backward with create_graph)");
    }
    auto call = c10::static_intrusive_pointer_cast<LossCall>(ctx->saved_data["call"].toCapsule());
    const auto saved = ctx->get_saved_variables();
    const size_t num_params = call->params.size();
    torch::autograd::variable_list out(3 + num_params);
    const at::Tensor& grad_loss = grads[0];  // scalar float32
    if (!grad_loss.defined()) return out;
    if (ctx->needs_input_grad(0)) out[0] = saved[0] * grad_loss;
    for (size_t p = 0; p < num_params; ++p) {
      const at::Tensor& param = call->params[p];
      const at::Tensor& sum = saved[1 + p];
      // No loss token: zero gradients, as the full path's all-ignored cross-entropy gives.
      out[3 + p] =
          sum.defined() ? (sum * grad_loss).to(param.scalar_type()) : at::zeros_like(param);
    }
    return out;
  }
};

// Inputs: rows [N, H], targets [N], the call. Forward computes each row's cross-entropy [N] and
// d CE_n / d rows_n (a row's loss depends on its own hidden state alone), saved [N, H] in rows'
// dtype; backward scales row n's by the incoming gradient's n-th value. lm_head is frozen.
class ChunkedTokenCrossEntropy : public torch::autograd::Function<ChunkedTokenCrossEntropy> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& rows,
                            const at::Tensor& targets, c10::intrusive_ptr<LossCall> call) {
    const int64_t n = rows.size(0);
    std::vector<at::Tensor> losses;
    at::Tensor grad_rows = at::empty_like(rows);
    const int64_t chunk = chunk_size(call->chunk_tokens, n);
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t c = std::min(chunk, n - start);
      const at::Tensor h = rows.narrow(0, start, c).detach().requires_grad_(true);
      ChunkResult r =
          chunk_loss_and_grads(*call->lm_head, h, targets.narrow(0, start, c), {}, call->softcap);
      losses.push_back(r.loss);
      grad_rows.narrow(0, start, c).copy_(r.grad_h);
    }
    ctx->save_for_backward({grad_rows});
    return losses.empty() ? at::zeros({0}, rows.options().dtype(at::kFloat)) : at::cat(losses);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (at::GradMode::is_enabled()) {
      throw_error(ErrorKind::kInternal,
                  "chunked token loss: its gradients are computed in forward and cannot be "
                  "differentiated again (backward with create_graph)");
    }
    const at::Tensor grad_rows = ctx->get_saved_variables()[0];
    torch::autograd::variable_list out(3);
    if (grads[0].defined()) out[0] = grad_rows * grads[0].unsqueeze(1).to(grad_rows.scalar_type());
    return out;
  }
};

void check_inputs(const at::Tensor& hidden, const LinearSlot& lm_head, const at::Tensor& labels) {
  if (hidden.dim() != 3 || labels.dim() != 2 || hidden.size(0) != labels.size(0) ||
      hidden.size(1) != labels.size(1) || hidden.size(2) != lm_head.in_features()) {
    throw_error(ErrorKind::kInternal,
                "chunked loss: hidden must be [B, T, H] with H = lm_head's " +
                    std::to_string(lm_head.in_features()) + " inputs, and labels [B, T]",
                {.tensor = "labels"});
  }
  if (!labels.device().is_cpu()) {
    throw_error(ErrorKind::kInternal,
                "chunked loss: labels must stay on the host (reading them from the device would "
                "synchronise it)",
                {.tensor = "labels"});
  }
}

}  // namespace

at::Tensor chunked_causal_lm_loss_sum(const at::Tensor& hidden, LinearSlot& lm_head,
                                      const at::Tensor& labels, int64_t chunk_tokens,
                                      double final_logit_softcap) {
  check_inputs(hidden, lm_head, labels);
  const LossPositions where = loss_positions(labels, lm_head.out_features(), hidden.device());
  // index_select is an autograd op: the gathered rows' gradient scatters back into hidden.
  const at::Tensor rows = hidden.reshape({-1, hidden.size(2)}).index_select(0, where.rows);

  std::vector<at::Tensor> params;
  if (at::GradMode::is_enabled()) {
    for (const at::Tensor& p : lm_head.parameters()) {
      if (p.requires_grad()) params.push_back(p);
    }
  }
  if (!at::GradMode::is_enabled() || (!rows.requires_grad() && params.empty())) {
    return forward_chunks(lm_head, rows, where.targets, chunk_tokens, final_logit_softcap);
  }
  auto call = c10::make_intrusive<LossCall>();
  call->lm_head = &lm_head;
  call->chunk_tokens = chunk_tokens;
  call->softcap = final_logit_softcap;
  call->rows_need_grad = rows.requires_grad();
  call->params = params;
  return ChunkedLinearCrossEntropy::apply(rows, where.targets, call, at::TensorList(params));
}

TokenCrossEntropy chunked_token_cross_entropy(const at::Tensor& hidden, LinearSlot& lm_head,
                                              const at::Tensor& labels, int64_t chunk_tokens,
                                              double final_logit_softcap) {
  check_inputs(hidden, lm_head, labels);
  const LossPositions where = loss_positions(labels, lm_head.out_features(), hidden.device());
  const at::Tensor rows = hidden.reshape({-1, hidden.size(2)}).index_select(0, where.rows);
  TokenCrossEntropy out;
  out.rows = at::floor_divide(where.rows, hidden.size(1));
  if (at::GradMode::is_enabled()) {
    for (const at::Tensor& p : lm_head.parameters()) {
      if (p.requires_grad()) {
        throw_error(ErrorKind::kInternal,
                    "chunked token loss: lm_head has trainable parameters; sequence objectives "
                    "train adapters on the decoder only");
      }
    }
  }
  if (!at::GradMode::is_enabled() || !rows.requires_grad()) {
    std::vector<at::Tensor> losses;
    const int64_t n = rows.size(0);
    const int64_t chunk = chunk_size(chunk_tokens, n);
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t c = std::min(chunk, n - start);
      losses.push_back(chunk_token_losses(lm_head, rows.narrow(0, start, c).detach(),
                                          where.targets.narrow(0, start, c), final_logit_softcap));
    }
    out.values =
        losses.empty() ? at::zeros({0}, hidden.options().dtype(at::kFloat)) : at::cat(losses);
    return out;
  }
  auto call = c10::make_intrusive<LossCall>();
  call->lm_head = &lm_head;
  call->chunk_tokens = chunk_tokens;
  call->softcap = final_logit_softcap;
  call->rows_need_grad = true;
  out.values = ChunkedTokenCrossEntropy::apply(rows, where.targets, call);
  return out;
}

}  // namespace qtrain

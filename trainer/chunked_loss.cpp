#include "trainer/chunked_loss.h"

#include "core/error.h"
#include "data/examples.h"
#include "models/linear.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <mutex>
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

// h [C, H], targets [C] -> scalar float32: the summed cross-entropy of lm_head(h). Only this
// chunk's logits exist, in the model's dtype and in float32.
at::Tensor chunk_loss(LinearSlot& lm_head, const at::Tensor& h, const at::Tensor& targets) {
  return at::cross_entropy_loss(lm_head.forward(h).to(at::kFloat), targets, {}, at::Reduction::Sum,
                                kIgnoreLabel);
}

int64_t chunk_size(int64_t chunk_tokens, int64_t n) {
  return chunk_tokens > 0 ? std::min(chunk_tokens, n) : n;
}

// rows [N, H], targets [N] -> scalar float32 on rows' device, chunk by chunk.
at::Tensor forward_chunks(LinearSlot& lm_head, const at::Tensor& rows, const at::Tensor& targets,
                          int64_t chunk_tokens) {
  at::Tensor total = at::zeros({}, rows.options().dtype(at::kFloat));
  const int64_t n = rows.size(0);
  const int64_t chunk = chunk_size(chunk_tokens, n);
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t c = std::min(chunk, n - start);
    total.add_(chunk_loss(lm_head, rows.narrow(0, start, c), targets.narrow(0, start, c)));
  }
  return total;
}

// The default generators lm_head's dropout may draw from (CPU, and the device's), so backward
// can replay the forward chunks' masks (the same pattern as models/layer_checkpoint.cpp).
struct RngSnapshot {
  std::vector<std::pair<at::Generator, at::Tensor>> states;

  static RngSnapshot capture(const c10::Device& device) {
    RngSnapshot snap;
    std::vector<c10::Device> devices = {c10::Device(c10::kCPU)};
    if (device.is_cuda()) devices.push_back(device);
    for (const auto& d : devices) {
      at::Generator gen = at::globalContext().defaultGenerator(d);
      std::lock_guard<std::mutex> lock(gen.mutex());
      snap.states.emplace_back(gen, gen.get_state());
    }
    return snap;
  }

  void restore() const {
    for (const auto& [gen, state] : states) {
      at::Generator g = gen;
      std::lock_guard<std::mutex> lock(g.mutex());
      g.set_state(state);
    }
  }
};

struct LossCall : torch::CustomClassHolder {
  LinearSlot* lm_head = nullptr;
  int64_t chunk_tokens = 0;
  std::vector<at::Tensor> params;  // lm_head's parameters that require grad
  RngSnapshot rng;
};

// Inputs: rows [N, H], targets [N], the call, lm_head's trainable parameters (passed so the loss
// requires grad even when rows do not, e.g. LoRA on lm_head alone). Backward returns their
// gradients summed over the chunks in float32 (or float64) and rounded once, so autograd
// accumulates each parameter's .grad (and fires its hooks) once per pass.
class ChunkedLinearCrossEntropy : public torch::autograd::Function<ChunkedLinearCrossEntropy> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& rows,
                            const at::Tensor& targets, c10::intrusive_ptr<LossCall> call,
                            at::TensorList params) {
    call->rng = RngSnapshot::capture(rows.device());
    ctx->save_for_backward({rows, targets});
    ctx->saved_data["call"] = at::IValue::make_capsule(call);
    return forward_chunks(*call->lm_head, rows, targets, call->chunk_tokens);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto call = c10::static_intrusive_pointer_cast<LossCall>(ctx->saved_data["call"].toCapsule());
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& rows = saved[0];
    const at::Tensor& targets = saved[1];
    const size_t num_params = call->params.size();
    torch::autograd::variable_list out(3 + num_params);
    const at::Tensor& grad_loss = grads[0];
    if (!grad_loss.defined()) return out;

    const bool rows_need_grad = ctx->needs_input_grad(0);
    const int64_t n = rows.size(0);
    std::vector<at::Tensor> param_sums(num_params);
    at::Tensor grad_rows = rows_need_grad ? at::empty_like(rows) : at::Tensor();
    const RngSnapshot now = RngSnapshot::capture(rows.device());
    call->rng.restore();
    const int64_t chunk = chunk_size(call->chunk_tokens, n);
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t c = std::min(chunk, n - start);
      at::Tensor h = rows.narrow(0, start, c).detach().requires_grad_(rows_need_grad);
      at::Tensor loss;
      {
        at::AutoGradMode grad_on(true);
        loss = chunk_loss(*call->lm_head, h, targets.narrow(0, start, c));
      }
      torch::autograd::variable_list inputs;
      if (rows_need_grad) inputs.push_back(h);
      inputs.insert(inputs.end(), call->params.begin(), call->params.end());
      const auto chunk_grads = torch::autograd::grad({loss}, inputs, {grad_loss},
                                                     /*retain_graph=*/false,
                                                     /*create_graph=*/false, /*allow_unused=*/true);
      if (rows_need_grad) grad_rows.narrow(0, start, c).copy_(chunk_grads[0]);
      const size_t first_param = rows_need_grad ? 1 : 0;
      for (size_t p = 0; p < num_params; ++p) {
        const at::Tensor& g = chunk_grads[first_param + p];
        if (!g.defined()) continue;
        if (param_sums[p].defined()) {
          param_sums[p].add_(g);
        } else {
          param_sums[p] = g.to(at::promote_types(g.scalar_type(), at::kFloat),
                               /*non_blocking=*/false, /*copy=*/true);
        }
      }
    }
    now.restore();
    out[0] = grad_rows;
    for (size_t p = 0; p < num_params; ++p) {
      const at::Tensor& param = call->params[p];
      // No loss token: zero gradients, as the full path's all-ignored cross-entropy gives.
      out[3 + p] =
          param_sums[p].defined() ? param_sums[p].to(param.scalar_type()) : at::zeros_like(param);
    }
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
                                      const at::Tensor& labels, int64_t chunk_tokens) {
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
    return forward_chunks(lm_head, rows, where.targets, chunk_tokens);
  }
  auto call = c10::make_intrusive<LossCall>();
  call->lm_head = &lm_head;
  call->chunk_tokens = chunk_tokens;
  call->params = params;
  return ChunkedLinearCrossEntropy::apply(rows, where.targets, call, at::TensorList(params));
}

}  // namespace qtrain

#include "models/layer_checkpoint.h"

#include "models/llama.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <mutex>
#include <utility>
#include <vector>

namespace qtrain {
namespace {

// The default generators a layer's dropout may draw from (CPU, and the input's CUDA device),
// with their states at the time of the first forward pass.
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

struct LayerCall : torch::CustomClassHolder {
  DecoderLayer* layer = nullptr;
  at::Tensor cos, sin;
  AttentionLayout layout;
  RngSnapshot rng;
  std::shared_ptr<ActivationOffloader> offloader;  // null: x is saved on its device
  int64_t index = 0;                               // the layer's place, for the offloader
};

class CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<LayerCall> call) {
    call->rng = RngSnapshot::capture(x.device());
    if (call->offloader) {
      call->offloader->offload(call->index, x);
    } else {
      ctx->save_for_backward({x});
    }
    ctx->saved_data["call"] = at::IValue::make_capsule(call);
    // Function::apply runs forward with grad mode off: nothing inside the layer is recorded.
    return call->layer->forward(x, call->cos, call->sin, call->layout, nullptr, nullptr);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto call = c10::static_intrusive_pointer_cast<LayerCall>(ctx->saved_data["call"].toCapsule());
    const at::Tensor x =
        call->offloader ? call->offloader->fetch(call->index) : ctx->get_saved_variables()[0];
    // Replay the first pass's random numbers, then put the generators back where the rest of
    // the backward pass expects them.
    const RngSnapshot now = RngSnapshot::capture(x.device());
    call->rng.restore();
    at::Tensor input = x.detach().requires_grad_(true);
    at::Tensor out;
    {
      at::AutoGradMode grad_on(true);
      out = call->layer->forward(input, call->cos, call->sin, call->layout, nullptr, nullptr);
    }
    now.restore();
    torch::autograd::backward({out}, {grads[0]});
    return {input.grad(), at::Tensor()};
  }
};

}  // namespace

at::Tensor checkpointed_layer(DecoderLayer& layer, const at::Tensor& x, const at::Tensor& cos,
                              const at::Tensor& sin, const AttentionLayout& layout,
                              std::shared_ptr<ActivationOffloader> offloader, int64_t index) {
  auto call = c10::make_intrusive<LayerCall>();
  call->offloader = std::move(offloader);
  call->index = index;
  call->layer = &layer;
  call->cos = cos;
  call->sin = sin;
  call->layout = layout;
  return CheckpointedLayer::apply(x, call);
}

}  // namespace qtrain

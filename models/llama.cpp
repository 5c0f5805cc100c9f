#include "models/llama.h"

#include "core/error.h"
#include "models/eager_attention.h"
#include "models/layer_checkpoint.h"
#include "models/varlen_attention.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <string>

namespace qtrain {
namespace {

// Batch tensors arrive on the CPU or already on the model's device (copied there ahead,
// non-blocking, by the caller); only the former are copied.
at::Tensor on_device(const at::Tensor& t, const at::Device& device) {
  if (t.device() == device) return t;
  // A host tensor is staged in pinned memory so the copy is asynchronous on the compute stream.
  if (t.is_cpu() && device.is_cuda() && !t.is_pinned()) {
    return t.pin_memory().to(device, /*non_blocking=*/true);
  }
  return t.to(device, /*non_blocking=*/true);
}

// The host options of an embedding table for a model computing on `device`: pinned memory when
// that is a CUDA device, so the gathered rows can be copied without waiting.
at::TensorOptions host_table_options(const at::TensorOptions& options) {
  return options.device(c10::kCPU).pinned_memory(options.device().is_cuda());
}

}  // namespace

void check_embedding_placement(const ModelConfig& config, EmbeddingPlacement placement) {
  if (placement != EmbeddingPlacement::kHost || !config.tie_word_embeddings) return;
  throw_error(ErrorKind::kConfig,
              "this " + config.model_type +
                  " model ties its input embeddings to lm_head (tie_word_embeddings), and lm_head "
                  "needs the table on the device; set model.embeddings_on_host=false",
              {.field = "model.embeddings_on_host"});
}

Attention::Attention(const ModelConfig& c, const at::TensorOptions& options,
                     const std::string& prefix, const LinearFactory& make, int64_t layer)
    : heads_(c.num_attention_heads),
      kv_heads_(c.num_key_value_heads),
      head_dim_(c.head_dim),
      sliding_window_(c.layer_slides(layer) ? c.sliding_window : std::nullopt),
      scale_(c.attention_scale()),
      softcap_(c.attn_logit_softcapping) {
  const int64_t hidden = c.hidden_size, q_out = heads_ * head_dim_, kv_out = kv_heads_ * head_dim_;
  if (c.fused_projections()) {
    qkv_proj = register_module(
        "qkv_proj", make(prefix + "qkv_proj", hidden, q_out + 2 * kv_out, c.has_qkv_bias()));
  } else {
    q_proj = register_module("q_proj", make(prefix + "q_proj", hidden, q_out, c.has_qkv_bias()));
    k_proj = register_module("k_proj", make(prefix + "k_proj", hidden, kv_out, c.has_qkv_bias()));
    v_proj = register_module("v_proj", make(prefix + "v_proj", hidden, kv_out, c.has_qkv_bias()));
  }
  o_proj = register_module("o_proj", make(prefix + "o_proj", q_out, hidden, c.has_o_bias()));
  if (c.qk_norm) {
    const bool unit_offset = c.gemma_style();  // gemma3's q/k norms scale by 1 + w
    q_norm = register_module(
        "q_norm", std::make_shared<RMSNorm>(head_dim_, c.rms_norm_eps, options, unit_offset));
    k_norm = register_module(
        "k_norm", std::make_shared<RMSNorm>(head_dim_, c.rms_norm_eps, options, unit_offset));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> Attention::project(const at::Tensor& x) {
  const int64_t batch = x.size(0), length = x.size(1);
  // [B, T, n*hd] -> [B, T, n, hd]
  if (qkv_proj) {
    const int64_t q_out = heads_ * head_dim_, kv_out = kv_heads_ * head_dim_;
    const at::Tensor qkv = qkv_proj->forward(x);  // [B, T, q_out + 2 kv_out]
    return {qkv.narrow(-1, 0, q_out).reshape({batch, length, heads_, head_dim_}),
            qkv.narrow(-1, q_out, kv_out).reshape({batch, length, kv_heads_, head_dim_}),
            qkv.narrow(-1, q_out + kv_out, kv_out).reshape({batch, length, kv_heads_, head_dim_})};
  }
  return {q_proj->forward(x).view({batch, length, heads_, head_dim_}),
          k_proj->forward(x).view({batch, length, kv_heads_, head_dim_}),
          v_proj->forward(x).view({batch, length, kv_heads_, head_dim_})};
}

at::Tensor Attention::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                              const AttentionLayout& layout, at::Tensor* keys, at::Tensor* values) {
  const int64_t batch = x.size(0), length = x.size(1);
  auto [q, k, v] = project(x);
  // Qwen3 and Gemma 3 normalise each head before the transpose and RoPE.
  if (q_norm) {
    q = q_norm->forward(q);
    k = k_norm->forward(k);
  }
  if (layout.varlen()) {
    if (keys != nullptr) {
      throw_error(ErrorKind::kUnsupported, "packed attention cannot fill a KV cache");
    }
    return o_proj->forward(packed_attention(q, k, v, cos, sin, layout.packed));
  }
  q = apply_rope(q.transpose(1, 2), cos, sin);  // [B, heads, T, hd]
  k = apply_rope(k.transpose(1, 2), cos, sin);  // [B, kv, T, hd]
  v = v.transpose(1, 2);
  if (keys != nullptr && keys->defined()) {
    k = at::cat({*keys, k}, 2);
    v = at::cat({*values, v}, 2);
  }
  if (keys != nullptr) {
    *keys = k;
    *values = v;
  }
  const at::Tensor& mask = layout.mask;
  at::Tensor out =
      softcap_ ? eager_attention(q, k, v, mask, scale_, softcap_)
               : at::scaled_dot_product_attention(
                     q, k, v, mask.defined() ? c10::optional<at::Tensor>(mask) : c10::nullopt,
                     /*dropout_p=*/0.0, /*is_causal=*/!mask.defined() && length > 1, scale_,
                     /*enable_gqa=*/heads_ != kv_heads_);
  out = out.transpose(1, 2).reshape({batch, length, heads_ * head_dim_});
  return o_proj->forward(out);
}

at::Tensor Attention::packed_attention(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& cos,
                                       const at::Tensor& sin, const PackedSegments& packed) {
  // Tokens stay in [B, T, heads, hd] order, so flattening B and T into N needs no copy.
  const int64_t batch = q.size(0), length = q.size(1), tokens = batch * length;
  at::Tensor flat_q = apply_rope(q, cos, sin, /*head_axis=*/2).reshape({tokens, heads_, head_dim_});
  at::Tensor flat_k =
      apply_rope(k, cos, sin, /*head_axis=*/2).reshape({tokens, kv_heads_, head_dim_});
  at::Tensor flat_v = v.reshape({tokens, kv_heads_, head_dim_});
  at::Tensor out = softcap_
                       ? eager_packed_attention(flat_q, flat_k, flat_v, packed, sliding_window_,
                                                scale_, softcap_)
                       : varlen_attention(flat_q, flat_k, flat_v, packed, sliding_window_, scale_);
  return out.reshape({batch, length, heads_ * head_dim_});
}

Mlp::Mlp(const ModelConfig& c, const std::string& prefix, const LinearFactory& make)
    : intermediate_(c.intermediate_size), gelu_tanh_(c.hidden_act == "gelu_pytorch_tanh") {
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  if (c.fused_projections()) {
    gate_up_proj = register_module("gate_up_proj",
                                   make(prefix + "gate_up_proj", hidden, 2 * inter, c.mlp_bias));
  } else {
    gate_proj = register_module("gate_proj", make(prefix + "gate_proj", hidden, inter, c.mlp_bias));
    up_proj = register_module("up_proj", make(prefix + "up_proj", hidden, inter, c.mlp_bias));
  }
  down_proj = register_module("down_proj", make(prefix + "down_proj", inter, hidden, c.mlp_bias));
}

at::Tensor Mlp::forward(const at::Tensor& x) {
  at::Tensor gate, up;
  if (gate_up_proj) {
    const at::Tensor both = gate_up_proj->forward(x);  // [..., 2 I]: gate, then up
    gate = both.narrow(-1, 0, intermediate_);
    up = both.narrow(-1, intermediate_, intermediate_);
  } else {
    gate = gate_proj->forward(x);
    up = up_proj->forward(x);
  }
  const at::Tensor activated = gelu_tanh_ ? at::gelu(gate, "tanh") : at::silu(gate);
  return down_proj->forward(activated * up);
}

DecoderLayer::DecoderLayer(const ModelConfig& c, const at::TensorOptions& options,
                           const std::string& prefix, const LinearFactory& make, int64_t layer) {
  self_attn = register_module(
      "self_attn", std::make_shared<Attention>(c, options, prefix + "self_attn.", make, layer));
  mlp = register_module("mlp", std::make_shared<Mlp>(c, prefix + "mlp.", make));
  const bool gemma = c.gemma_style();
  auto norm = [&](const char* name) {
    return register_module(
        name, std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options, gemma));
  };
  input_layernorm = norm("input_layernorm");
  post_attention_layernorm = norm("post_attention_layernorm");
  if (gemma) {
    pre_feedforward_layernorm = norm("pre_feedforward_layernorm");
    post_feedforward_layernorm = norm("post_feedforward_layernorm");
  }
}

at::Tensor DecoderLayer::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                 const AttentionLayout& layout, at::Tensor* keys,
                                 at::Tensor* values) {
  if (pre_feedforward_layernorm) {  // gemma2's sandwich norms
    const at::Tensor attention =
        self_attn->forward(input_layernorm->forward(x), cos, sin, layout, keys, values);
    const at::Tensor h = x + post_attention_layernorm->forward(attention);
    return h +
           post_feedforward_layernorm->forward(mlp->forward(pre_feedforward_layernorm->forward(h)));
  }
  at::Tensor h =
      x + self_attn->forward(input_layernorm->forward(x), cos, sin, layout, keys, values);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

DecoderStack::DecoderStack(const ModelConfig& c, const at::TensorOptions& options,
                           const LinearFactory& make, const at::TensorOptions& embedding_options) {
  // A plain Module holding the embedding matrix, so its parameter is named embed_tokens.weight.
  auto embedding = register_module("embed_tokens", std::make_shared<torch::nn::Module>());
  embed_tokens = embedding->register_parameter(
      "weight", at::empty({c.vocab_size, c.hidden_size}, embedding_options));
  auto list = register_module("layers", std::make_shared<torch::nn::Module>());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    layers.push_back(list->register_module(
        std::to_string(i), std::make_shared<DecoderLayer>(c, options, prefix, make, i)));
  }
  norm = register_module(
      "norm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options, c.gemma_style()));
}

CausalLM::CausalLM(const ModelConfig& config, const at::TensorOptions& options,
                   const LinearFactory& make_linear, EmbeddingPlacement embeddings)
    : config_(config), options_(options) {
  config_.validate();
  check_embedding_placement(config_, embeddings);
  embeddings_on_host_ = embeddings == EmbeddingPlacement::kHost;
  LinearFactory make = make_linear;
  if (!make) {
    make = [options](const std::string&, int64_t in, int64_t out, bool bias) {
      return std::make_shared<DenseLinear>(in, out, bias, options);
    };
  }
  model = register_module(
      "model",
      std::make_shared<DecoderStack>(config_, options, make,
                                     embeddings_on_host_ ? host_table_options(options) : options));
  if (config_.tie_word_embeddings) {
    lm_head = register_module("lm_head", std::make_shared<DenseLinear>(model->embed_tokens));
  } else {
    lm_head =
        register_module("lm_head", make("lm_head", config_.hidden_size, config_.vocab_size, false));
  }
  inv_freq_ = std::make_unique<RopeFrequencies>(
      rope_inverse_frequencies(config_.head_dim, config_.rope_theta, config_.rope_scaling));
  if (config_.local_rope_theta) {
    local_inv_freq_ = std::make_unique<RopeFrequencies>(rope_inverse_frequencies(
        config_.head_dim, *config_.local_rope_theta, config_.local_rope_scaling));
  }
}

c10::Device CausalLM::device() const {
  return model->norm->weight().device();
}

void CausalLM::set_embeddings_on_host(bool on) {
  if (on) check_embedding_placement(config_, EmbeddingPlacement::kHost);
  embeddings_on_host_ = on;
  const c10::Device target = on ? c10::Device(c10::kCPU) : device();
  at::Tensor& table = model->embed_tokens;
  if (table.device() == target) return;
  torch::NoGradGuard no_grad;
  // set_data swaps the parameter's storage in place, so every handle on it (the registered
  // parameter, model->embed_tokens) sees the moved table.
  const at::TensorOptions where =
      on ? host_table_options(table.options().device(device())) : table.options().device(target);
  at::Tensor moved = at::empty(table.sizes(), where);
  moved.copy_(table);
  table.set_data(moved);
}

at::Tensor CausalLM::embed(const at::Tensor& ids, const c10::Device& device) const {
  const at::Tensor& table = model->embed_tokens;
  if (!embeddings_on_host_) return at::embedding(table, on_device(ids, table.device()));
  // Rows are gathered where the table lives (the host); only [B, T, H] crosses to the device.
  // Device ids: one blocking copy (a non-blocking one would return before the ids are there).
  const at::Tensor host_ids = ids.device() == table.device() ? ids : ids.to(table.device());
  if (table.requires_grad() && at::GradMode::is_enabled()) {
    // A trainable table: autograd carries the gradient back across the copy.
    return on_device(at::embedding(table, host_ids), device);
  }
  const int64_t batch = host_ids.size(0), length = host_ids.size(1), hidden = table.size(1);
  // Pinned rows when the copy goes to a CUDA device: it then runs without waiting, and the
  // caching host allocator keeps the block until the copy is done.
  at::Tensor rows =
      at::empty({batch * length, hidden}, at::TensorOptions()
                                              .dtype(table.scalar_type())
                                              .pinned_memory(device.is_cuda() && table.is_cpu()));
  at::index_select_out(rows, table, 0, host_ids.reshape({-1}));
  return on_device(rows.view({batch, length, hidden}), device);
}

AttentionLayout CausalLM::attention_layout(const ForwardInputs& in, int64_t batch, int64_t length,
                                           int64_t past) const {
  return attention_layout(in, batch, length, past, config_.sliding_window);
}

AttentionLayout CausalLM::attention_layout(const ForwardInputs& in, int64_t batch, int64_t length,
                                           int64_t past, std::optional<int64_t> window) const {
  const auto device = this->device();
  AttentionLayout layout;
  if (in.cache != nullptr) {
    if (in.cu_seqlens.defined()) {
      throw_error(ErrorKind::kUnsupported, "cu_seqlens cannot be combined with a KV cache");
    }
  } else if (in.cu_seqlens.defined()) {
    PackedSegments& packed = layout.packed;
    packed.cu_seqlens_host = in.cu_seqlens.is_cpu() ? in.cu_seqlens : in.cu_seqlens_host;
    packed.max_seqlen = in.max_seqlen;
    if (packed.cu_seqlens_host.defined()) {
      const int64_t longest = check_cu_seqlens(packed.cu_seqlens_host, batch, length);
      if (in.max_seqlen != 0 && in.max_seqlen != longest) {
        throw_error(ErrorKind::kShape,
                    "max_seqlen is " + std::to_string(in.max_seqlen) +
                        " but the longest segment of cu_seqlens has " + std::to_string(longest),
                    {.tensor = "max_seqlen"});
      }
      packed.max_seqlen = longest;
    } else if (packed.max_seqlen == 0) {
      packed.cu_seqlens_host = in.cu_seqlens.cpu();  // waits for the device, once per forward
      packed.max_seqlen = check_cu_seqlens(packed.cu_seqlens_host, batch, length);
    }
    packed.cu_seqlens = on_device(in.cu_seqlens, device).to(at::kInt);
    return layout;
  } else if (in.segment_ids.defined() && in.segment_ids.is_cpu()) {
    if (auto derived = segments_from_ids(in.segment_ids)) {
      layout.packed = *std::move(derived);
      layout.packed.cu_seqlens = on_device(layout.packed.cu_seqlens_host, device);
      return layout;
    }
  }
  layout.mask = build_attention_mask(batch, length, past, in.segment_ids, window, device);
  return layout;
}

at::Tensor CausalLM::hidden_states(const ForwardInputs& in) {
  if (!in.input_ids.defined() || in.input_ids.dim() != 2) {
    throw_error(ErrorKind::kShape, "input_ids must be [batch, length]", {.tensor = "input_ids"});
  }
  const int64_t batch = in.input_ids.size(0), length = in.input_ids.size(1);
  const auto device = this->device();
  KvCache* cache = in.cache;
  const int64_t past = cache ? cache->length() : 0;
  if (cache && cache->keys.empty()) {
    cache->keys.resize(config_.num_hidden_layers);
    cache->values.resize(config_.num_hidden_layers);
  }
  const at::Tensor& ids = in.input_ids;
  at::Tensor positions =
      in.position_ids.defined()
          ? on_device(in.position_ids, device)
          : at::arange(past, past + length, ids.options().device(device)).expand({batch, length});
  if (positions.sizes() != ids.sizes()) {
    throw_error(ErrorKind::kShape, "position_ids must have the shape of input_ids",
                {.tensor = "position_ids"});
  }
  if (in.segment_ids.defined() && in.segment_ids.sizes() != ids.sizes()) {
    throw_error(ErrorKind::kShape, "segment_ids must have the shape of input_ids",
                {.tensor = "segment_ids"});
  }
  const AttentionLayout layout = attention_layout(in, batch, length, past);
  // gemma2/3: layers that do not slide need a mask without the window (packed layouts apply the
  // window per layer inside the attention and are shared).
  const bool per_layer_masks =
      !config_.layer_types.empty() && config_.sliding_window && !layout.varlen();
  AttentionLayout full_layout;
  if (per_layer_masks) full_layout = attention_layout(in, batch, length, past, std::nullopt);
  auto layout_of = [&](size_t layer) -> const AttentionLayout& {
    return per_layer_masks && !config_.layer_slides(static_cast<int64_t>(layer)) ? full_layout
                                                                                 : layout;
  };
  at::Tensor x = embed(ids, device);
  if (config_.gemma_style()) {
    // transformers: embeddings * tensor(sqrt(hidden)) (float32) cast to the weights' dtype.
    const float scale = static_cast<float>(std::sqrt(static_cast<double>(config_.hidden_size)));
    x = x * at::scalar_tensor(scale, at::kFloat).to(x.scalar_type()).to(x.device());
  }
  // Not a structured binding: the lambda below captures them (clang 14 refuses bindings there).
  at::Tensor cos, sin;
  std::tie(cos, sin) = rope_cos_sin(inv_freq_->on(positions.device()), positions, x.scalar_type());
  // gemma3: sliding layers rotate with their own frequencies.
  at::Tensor local_cos, local_sin;
  if (local_inv_freq_) {
    std::tie(local_cos, local_sin) =
        rope_cos_sin(local_inv_freq_->on(positions.device()), positions, x.scalar_type());
  }
  auto rope_of = [&](size_t layer) -> std::pair<const at::Tensor&, const at::Tensor&> {
    if (config_.layer_uses_local_rope(static_cast<int64_t>(layer))) return {local_cos, local_sin};
    return {cos, sin};
  };
  const bool checkpoint =
      gradient_checkpointing_ && is_training() && cache == nullptr && at::GradMode::is_enabled();
  // A checkpointed layer only runs its backward pass when its input requires grad; the frozen
  // embedding's output does not, so it is made a leaf that does.
  if (checkpoint && !x.requires_grad()) x = x.detach().requires_grad_(true);
  std::shared_ptr<ActivationOffloader> offloader;
  if (checkpoint && offload_activations_) {
    offloader = ActivationOffloader::create(device, simulate_offload_);
    last_offloader_ = offloader;
  }
  const size_t layers = model->layers.size();
  for (size_t i = 0; i < layers; ++i) {
    const auto [layer_cos, layer_sin] = rope_of(i);
    if (checkpoint) {
      const bool offload = offloader && i > 0 && i + 1 < layers;
      x = checkpointed_layer(*model->layers[i], x, layer_cos, layer_sin, layout_of(i),
                             offload ? offloader : nullptr, static_cast<int64_t>(i));
      continue;
    }
    at::Tensor* keys = cache ? &cache->keys[i] : nullptr;
    at::Tensor* values = cache ? &cache->values[i] : nullptr;
    x = model->layers[i]->forward(x, layer_cos, layer_sin, layout_of(i), keys, values);
  }
  return model->norm->forward(x);
}

at::Tensor CausalLM::forward(const ForwardInputs& in) {
  at::Tensor h = hidden_states(in);
  if (in.last_token_only) h = h.narrow(1, h.size(1) - 1, 1);
  at::Tensor logits = lm_head->forward(h);
  if (const auto cap = config_.final_logit_softcapping) logits = at::tanh(logits / *cap) * *cap;
  return logits;
}

std::vector<std::pair<std::string, std::shared_ptr<LinearSlot>>> CausalLM::named_linears() const {
  std::vector<std::pair<std::string, std::shared_ptr<LinearSlot>>> out;
  for (size_t i = 0; i < model->layers.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const auto& layer = model->layers[i];
    const auto& attn = *layer->self_attn;
    const auto& mlp = *layer->mlp;
    // Phi-3's fused slots stand where the split ones would; a family holds one kind or the other.
    const std::pair<const char*, std::shared_ptr<LinearSlot>> slots[] = {
        {"self_attn.q_proj", attn.q_proj}, {"self_attn.k_proj", attn.k_proj},
        {"self_attn.v_proj", attn.v_proj}, {"self_attn.qkv_proj", attn.qkv_proj},
        {"self_attn.o_proj", attn.o_proj}, {"mlp.gate_proj", mlp.gate_proj},
        {"mlp.up_proj", mlp.up_proj},      {"mlp.gate_up_proj", mlp.gate_up_proj},
        {"mlp.down_proj", mlp.down_proj}};
    for (const auto& [slot_name, slot] : slots) {
      if (slot) out.emplace_back(p + slot_name, slot);
    }
  }
  out.emplace_back("lm_head", lm_head);
  return out;
}

void CausalLM::replace_linear(const std::string& name, std::shared_ptr<LinearSlot> slot) {
  std::shared_ptr<LinearSlot>* target = nullptr;
  torch::nn::Module* parent = nullptr;
  std::string child;
  if (name == "lm_head") {
    target = &lm_head;
    parent = this;
    child = "lm_head";
  } else {
    const std::string prefix = "model.layers.";
    size_t dot = name.find('.', prefix.size());
    if (name.rfind(prefix, 0) != 0 || dot == std::string::npos) {
      throw_error(ErrorKind::kShape, "no linear slot with this name", {.tensor = name});
    }
    const size_t index = std::stoul(name.substr(prefix.size(), dot - prefix.size()));
    if (index >= model->layers.size()) {
      throw_error(ErrorKind::kShape, "no linear slot with this name", {.tensor = name});
    }
    const std::string rest = name.substr(dot + 1);
    auto& layer = model->layers[index];
    const std::pair<const char*, std::pair<torch::nn::Module*, std::shared_ptr<LinearSlot>*>>
        slots[] = {
            {"self_attn.q_proj", {layer->self_attn.get(), &layer->self_attn->q_proj}},
            {"self_attn.k_proj", {layer->self_attn.get(), &layer->self_attn->k_proj}},
            {"self_attn.v_proj", {layer->self_attn.get(), &layer->self_attn->v_proj}},
            {"self_attn.qkv_proj", {layer->self_attn.get(), &layer->self_attn->qkv_proj}},
            {"self_attn.o_proj", {layer->self_attn.get(), &layer->self_attn->o_proj}},
            {"mlp.gate_proj", {layer->mlp.get(), &layer->mlp->gate_proj}},
            {"mlp.up_proj", {layer->mlp.get(), &layer->mlp->up_proj}},
            {"mlp.gate_up_proj", {layer->mlp.get(), &layer->mlp->gate_up_proj}},
            {"mlp.down_proj", {layer->mlp.get(), &layer->mlp->down_proj}},
        };
    for (const auto& [slot_name, where] : slots) {
      if (rest == slot_name && *where.second) {
        parent = where.first;
        target = where.second;
        child = rest.substr(rest.find('.') + 1);
      }
    }
    if (target == nullptr) {
      throw_error(ErrorKind::kShape, "no linear slot with this name", {.tensor = name});
    }
  }
  if (slot->in_features() != (*target)->in_features() ||
      slot->out_features() != (*target)->out_features()) {
    throw_error(ErrorKind::kShape,
                "replacement is [" + std::to_string(slot->out_features()) + ", " +
                    std::to_string(slot->in_features()) + "], slot is [" +
                    std::to_string((*target)->out_features()) + ", " +
                    std::to_string((*target)->in_features()) + "]",
                {.tensor = name});
  }
  parent->replace_module(child, slot);
  *target = std::move(slot);
}

}  // namespace qtrain

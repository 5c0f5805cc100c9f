// The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3, Gemma 2/3, Phi-3) built from a
// ModelConfig, with module names that equal transformers' state-dict names
// (model.layers.0.self_attn.q_proj ...; Phi-3's fused self_attn.qkv_proj and mlp.gate_up_proj).
//
// Every projection is a LinearSlot: dense here, quantized or adapter-wrapped by later layers
// through replace_linear().
#pragma once

#include "models/activation_offload.h"
#include "models/attention_mask.h"
#include "models/config.h"
#include "models/linear.h"
#include "models/rms_norm.h"
#include "models/rope.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace qtrain {

// Keys and values of the tokens seen so far, per layer: [B, n_kv_heads, S, head_dim].
struct KvCache {
  std::vector<at::Tensor> keys;
  std::vector<at::Tensor> values;
  int64_t length() const { return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2); }
};

// Tensors may live on the CPU or on the model's device; those already there are used as they are.
struct ForwardInputs {
  at::Tensor input_ids;     // [B, T] int64
  at::Tensor position_ids;  // [B, T] int64; default: past + arange(T) on every row
  at::Tensor segment_ids;   // [B, T] int64, optional: packed samples attend only within a segment
  // Packed rows, optional: segment s of the flattened [B*T] token stream (rows concatenated) is
  // tokens [cu_seqlens[s], cu_seqlens[s+1]); every row end is a boundary. int32 [S+1], on the CPU
  // or the model's device. Given (without a KV cache), attention is variable-length and builds no
  // [T, T] mask; segment_ids are then not read. Without it, CPU segment_ids whose ids never
  // decrease along a row are turned into cu_seqlens here; other segment_ids use the mask path.
  at::Tensor cu_seqlens;
  // The CPU copy of a device cu_seqlens, optional: spares a device-to-host copy where one is
  // needed (checks, the per-segment path of fp32 or unusual head sizes).
  at::Tensor cu_seqlens_host;
  int64_t max_seqlen = 0;        // the longest segment; 0: computed from cu_seqlens
  KvCache* cache = nullptr;      // optional: read past keys/values and append the new ones
  bool last_token_only = false;  // logits for the last position only ([B, 1, V])
};

// Builds the slot of one projection: `name` is its HF module name ("model.layers.0.mlp.up_proj"),
// the weight is [out, in]. The default makes an uninitialised DenseLinear; the quantized loader
// passes one that reads and quantizes the weight right away, so no dense copy is ever allocated.
using LinearFactory = std::function<std::shared_ptr<LinearSlot>(
    const std::string& name, int64_t in_features, int64_t out_features, bool bias)>;

class Attention : public torch::nn::Module {
 public:
  // `layer` picks the layer's attention kind (ModelConfig::layer_slides).
  Attention(const ModelConfig& config, const at::TensorOptions& options, const std::string& prefix,
            const LinearFactory& make_linear, int64_t layer = 0);
  // x [B, T, H], cos/sin [B, T, head_dim] -> [B, T, H]. With past_keys/values defined
  // ([B, kv, P, hd]) they are prepended, and the concatenated keys/values are returned through
  // the out-parameters (mask layouts only).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     const AttentionLayout& layout, at::Tensor* keys, at::Tensor* values);

  // q/k/v_proj, or (phi3) qkv_proj alone, whose output rows are q, then k, then v.
  std::shared_ptr<LinearSlot> q_proj, k_proj, v_proj, qkv_proj, o_proj;
  std::shared_ptr<RMSNorm> q_norm, k_norm;  // qwen3 and gemma3 only

 private:
  // x [B, T, H] -> q [B, T, heads, hd], k and v [B, T, kv, hd].
  std::tuple<at::Tensor, at::Tensor, at::Tensor> project(const at::Tensor& x);

  // q [B, T, heads, hd], k/v [B, T, kv, hd] -> [B, T, heads * hd]
  at::Tensor packed_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& cos, const at::Tensor& sin,
                              const PackedSegments& packed);

  int64_t heads_, kv_heads_, head_dim_;
  std::optional<int64_t> sliding_window_;
  double scale_;
  std::optional<double> softcap_;  // scores soft-capped: the eager path, never a fused kernel
};

class Mlp : public torch::nn::Module {
 public:
  Mlp(const ModelConfig& config, const std::string& prefix, const LinearFactory& make_linear);
  at::Tensor forward(const at::Tensor& x);  // [..., H] -> [..., H]

  // gate_proj and up_proj, or (phi3) gate_up_proj alone: output rows [gate; up], [2 I, H].
  std::shared_ptr<LinearSlot> gate_proj, up_proj, gate_up_proj, down_proj;

 private:
  int64_t intermediate_;
  bool gelu_tanh_;  // gelu_pytorch_tanh instead of silu
};

class DecoderLayer : public torch::nn::Module {
 public:
  DecoderLayer(const ModelConfig& config, const at::TensorOptions& options,
               const std::string& prefix, const LinearFactory& make_linear, int64_t layer = 0);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     const AttentionLayout& layout, at::Tensor* keys, at::Tensor* values);

  std::shared_ptr<Attention> self_attn;
  std::shared_ptr<Mlp> mlp;
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
  // gemma2/3: post_attention_layernorm normalises the attention output; these two wrap the MLP.
  std::shared_ptr<RMSNorm> pre_feedforward_layernorm, post_feedforward_layernorm;
};

// "model": embeddings, decoder layers and the final norm.
class DecoderStack : public torch::nn::Module {
 public:
  // The embedding table is allocated with `embedding_options` (the host, or `options`).
  DecoderStack(const ModelConfig& config, const at::TensorOptions& options,
               const LinearFactory& make_linear, const at::TensorOptions& embedding_options);

  at::Tensor embed_tokens;  // [V, H], registered as embed_tokens.weight
  std::vector<std::shared_ptr<DecoderLayer>> layers;
  std::shared_ptr<RMSNorm> norm;
};

// Where the input embedding table lives (recipe key model.embeddings_on_host).
enum class EmbeddingPlacement {
  kDevice,  // with every other parameter, on options.device()
  // Host memory (pinned when the model is on CUDA): each forward gathers the batch's rows there
  // and copies only those [B, T, H] to the device, saving V x H x dtype bytes of device memory.
  // Input ids are best passed on the host: ids on the device cost one device-to-host copy (a
  // synchronisation) per forward.
  kHost,
};

// Error(kConfig) naming model.embeddings_on_host when `placement` is kHost and `config` ties its
// input embeddings to lm_head (lm_head needs the table on the device).
void check_embedding_placement(const ModelConfig& config, EmbeddingPlacement placement);

class CausalLM : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised with `options` (dtype, device); load them with
  // load_hf_weights() or initialise them yourself. `make_linear` builds every projection slot
  // (default: DenseLinear with `options`). With EmbeddingPlacement::kHost the table is allocated
  // on the host from the start (never on the device); a model with tied embeddings refuses it
  // with Error(kConfig) naming model.embeddings_on_host before anything is allocated.
  CausalLM(const ModelConfig& config, const at::TensorOptions& options,
           const LinearFactory& make_linear = {},
           EmbeddingPlacement embeddings = EmbeddingPlacement::kDevice);

  // Returns logits [B, T, V] (or [B, 1, V] with last_token_only) in the model's dtype, soft-capped
  // when the config has final_logit_softcapping (lm_head alone does not apply it).
  at::Tensor forward(const ForwardInputs& inputs);
  // Hidden states after the final norm: [B, T, H].
  at::Tensor hidden_states(const ForwardInputs& inputs);
  // The attention layout hidden_states() uses for `inputs` (tokens [batch, length] after `past`
  // cached ones), its tensors on the model's device.
  AttentionLayout attention_layout(const ForwardInputs& inputs, int64_t batch, int64_t length,
                                   int64_t past) const;
  // The same with an explicit window for the mask (layers that do not slide get std::nullopt).
  AttentionLayout attention_layout(const ForwardInputs& inputs, int64_t batch, int64_t length,
                                   int64_t past, std::optional<int64_t> window) const;

  // In training mode with grad enabled (and no KV cache), each decoder layer keeps only its input
  // and is recomputed in the backward pass (models/layer_checkpoint.h).
  void set_gradient_checkpointing(bool on) { gradient_checkpointing_ = on; }
  bool gradient_checkpointing() const { return gradient_checkpointing_; }
  // training.offload_activations: checkpointed layers' inputs go to pinned host memory on CUDA
  // (models/activation_offload.h); elsewhere it does nothing unless `simulate` (tests) asks for
  // the same bookkeeping with host copies. The first and last layers' inputs stay: the first is
  // the autograd leaf, the last is needed the moment backward starts.
  void set_activation_offloading(bool on, bool simulate = false) {
    offload_activations_ = on;
    simulate_offload_ = simulate;
  }
  // The most host bytes the last checkpointed forward's offloader held (0 without one).
  int64_t offloaded_peak_bytes() const {
    return last_offloader_ ? last_offloader_->peak_host_bytes() : 0;
  }

  // Moves the embedding table to the host (pinned when the model is on CUDA) and gathers rows
  // there from then on, or back to the compute device. On a CPU model the table stays where it is
  // and only the gather-then-copy path is switched (tests exercise it so). Tied embeddings refuse
  // `on` as the constructor does.
  void set_embeddings_on_host(bool on);
  bool embeddings_on_host() const { return embeddings_on_host_; }

  const ModelConfig& config() const { return config_; }
  const at::TensorOptions& options() const { return options_; }
  // The device the model computes on (its final norm's); the embedding table may be elsewhere.
  c10::Device device() const;

  // Every projection slot with its HF module name ("model.layers.3.mlp.up_proj", "lm_head").
  std::vector<std::pair<std::string, std::shared_ptr<LinearSlot>>> named_linears() const;
  // Replaces the slot named `name` (see named_linears) with `slot`; the shapes must agree.
  void replace_linear(const std::string& name, std::shared_ptr<LinearSlot> slot);

  std::shared_ptr<DecoderStack> model;
  std::shared_ptr<LinearSlot> lm_head;  // shares model.embed_tokens when embeddings are tied

 private:
  ModelConfig config_;
  at::TensorOptions options_;
  std::unique_ptr<RopeFrequencies> inv_freq_;
  std::unique_ptr<RopeFrequencies> local_inv_freq_;  // gemma3's sliding layers; null otherwise
  // ids [B, T] int64 (CPU or device) -> [B, T, H] on `device`.
  at::Tensor embed(const at::Tensor& ids, const c10::Device& device) const;

  bool embeddings_on_host_ = false;
  bool gradient_checkpointing_ = false;
  bool offload_activations_ = false, simulate_offload_ = false;
  std::shared_ptr<ActivationOffloader> last_offloader_;
};

}  // namespace qtrain

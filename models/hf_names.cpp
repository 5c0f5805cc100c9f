#include "models/hf_names.h"

namespace qtrain {

std::string hf_layer_prefix(int64_t layer) {
  return "model.layers." + std::to_string(layer) + ".";
}

std::vector<TensorSpec> hf_tensor_specs(const ModelConfig& c) {
  const int64_t hidden = c.hidden_size;
  const int64_t q_out = c.num_attention_heads * c.head_dim;
  const int64_t kv_out = c.num_key_value_heads * c.head_dim;
  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, hidden}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = hf_layer_prefix(i);
    auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
      specs.push_back({p + name + ".weight", {out, in}});
      if (bias) specs.push_back({p + name + ".bias", {out}});
    };
    if (c.fused_projections()) {
      // Phi3Attention registers o_proj first; Phi3MLP holds gate_up_proj = [gate; up].
      linear("self_attn.o_proj", hidden, q_out, c.has_o_bias());
      linear("self_attn.qkv_proj", q_out + 2 * kv_out, hidden, c.has_qkv_bias());
      linear("mlp.gate_up_proj", 2 * c.intermediate_size, hidden, c.mlp_bias);
    } else {
      linear("self_attn.q_proj", q_out, hidden, c.has_qkv_bias());
      linear("self_attn.k_proj", kv_out, hidden, c.has_qkv_bias());
      linear("self_attn.v_proj", kv_out, hidden, c.has_qkv_bias());
      linear("self_attn.o_proj", hidden, q_out, c.has_o_bias());
      if (c.qk_norm) {
        specs.push_back({p + "self_attn.q_norm.weight", {c.head_dim}});
        specs.push_back({p + "self_attn.k_norm.weight", {c.head_dim}});
      }
      linear("mlp.gate_proj", c.intermediate_size, hidden, c.mlp_bias);
      linear("mlp.up_proj", c.intermediate_size, hidden, c.mlp_bias);
    }
    linear("mlp.down_proj", hidden, c.intermediate_size, c.mlp_bias);
    specs.push_back({p + "input_layernorm.weight", {hidden}});
    specs.push_back({p + "post_attention_layernorm.weight", {hidden}});
    if (c.gemma_style()) {
      specs.push_back({p + "pre_feedforward_layernorm.weight", {hidden}});
      specs.push_back({p + "post_feedforward_layernorm.weight", {hidden}});
    }
  }
  specs.push_back({"model.norm.weight", {hidden}});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {c.vocab_size, hidden}});
  return specs;
}

}  // namespace qtrain

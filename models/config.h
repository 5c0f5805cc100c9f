// ModelConfig: everything the decoder needs, read from a Hugging Face config.json for the
// llama, mistral, qwen2, qwen3, gemma2, gemma3_text and phi3 model types (reference/formats.md
// §5); a gemma3 config.json is read through its text_config when it has no vision model.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

enum class RopeType { kDefault, kLinear, kLlama3 };

struct RopeScaling {
  RopeType type = RopeType::kDefault;
  double factor = 1.0;
  // llama3 only
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  // llama | mistral | qwen2 | qwen3 | gemma2 | gemma3_text | phi3
  std::string model_type = "llama";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v/o bias (llama); qwen2 always has q/k/v bias, no o bias
  bool mlp_bias = false;
  // qwen3, gemma3: RMSNorm over head_dim on q and k before RoPE (gemma3's scales by 1 + w).
  bool qk_norm = false;
  std::optional<int64_t> sliding_window;  // attend only to the last `sliding_window` keys
  // Per layer "sliding_attention" or "full_attention" (gemma2's alternation, gemma3's pattern);
  // empty: every layer uses sliding_window when it is set.
  std::vector<std::string> layer_types;
  // gemma3: the RoPE of sliding_attention layers (rope_local_base_freq, or
  // rope_parameters.sliding_attention); full_attention layers use rope_theta and rope_scaling.
  std::optional<double> local_rope_theta;
  RopeScaling local_rope_scaling;
  std::string hidden_act = "silu";  // silu | gelu_pytorch_tanh (Gemma's GeGLU)
  // gemma2/3: attention scale query_pre_attn_scalar^-0.5 instead of head_dim^-0.5.
  std::optional<double> query_pre_attn_scalar;
  // gemma2: scores (after scaling) and final logits become c * tanh(x / c). gemma3: the final
  // logits only; its attn_logit_softcapping is dropped when read (transformers ignores it).
  std::optional<double> attn_logit_softcapping;
  std::optional<double> final_logit_softcapping;
  std::string torch_dtype = "float32";
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;

  bool has_qkv_bias() const { return attention_bias || model_type == "qwen2"; }
  bool has_o_bias() const { return attention_bias && model_type != "qwen2"; }
  // gemma2/3: RMSNorm scales by (1 + w) in float32, embeddings are multiplied by sqrt(hidden),
  // and every layer has four norms (input, post_attention, pre_feedforward, post_feedforward).
  bool gemma_style() const { return model_type == "gemma2" || model_type == "gemma3_text"; }
  // phi3: one qkv_proj [(heads + 2 kv) * head_dim, hidden] and one gate_up_proj [2 I, hidden].
  bool fused_projections() const { return model_type == "phi3"; }
  // Whether decoder layer `layer` attends through the sliding window.
  bool layer_slides(int64_t layer) const {
    return sliding_window.has_value() &&
           (layer_types.empty() || layer_types.at(layer) == "sliding_attention");
  }
  // Whether decoder layer `layer` rotates with local_rope_theta / local_rope_scaling.
  bool layer_uses_local_rope(int64_t layer) const {
    return local_rope_theta.has_value() && !layer_types.empty() &&
           layer_types.at(layer) == "sliding_attention";
  }
  double attention_scale() const;

  // Throws Error(kConfig) naming the field for a missing/ill-typed/out-of-range value or an
  // unsupported model_type / rope type. `source` names the file in error messages.
  static ModelConfig from_json(const nlohmann::json& json,
                               const std::string& source = "config.json");
  static ModelConfig from_file(const std::string& path);
  // HF-style config.json for this config, with the rope_theta + rope_scaling spelling that
  // transformers 4.x writes and 5.x still reads.
  nlohmann::json to_json() const;

  // Checks internal consistency (heads divide, head_dim even, ...). Throws Error(kConfig).
  void validate(const std::string& source = "config") const;

 private:
  static ModelConfig parse_config(const nlohmann::json& json, const std::string& source);
};

}  // namespace qtrain

#include "models/config.h"

#include "core/error.h"
#include "core/json_file.h"
#include "core/log.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <set>

namespace qtrain {
namespace {

using nlohmann::json;

// Far beyond any real model (Llama 3.1 405B has 126 layers and about 2^38.6 parameters), low
// enough that tensor sizes and parameter counts fit int64 with room to spare.
constexpr int64_t kMaxLayers = 4096;
constexpr double kMaxParameters = 281474976710656.0;  // 2^48

[[noreturn]] void config_error(const std::string& source, const std::string& field,
                               const std::string& message) {
  throw_error(ErrorKind::kConfig, message, {.file = source, .field = field});
}

bool present(const json& j, const char* key) {
  return j.contains(key) && !j.at(key).is_null();
}

int64_t get_int(const json& j, const char* key, const std::string& source,
                std::optional<int64_t> fallback = std::nullopt) {
  if (!present(j, key)) {
    if (fallback) return *fallback;
    config_error(source, key, "required integer is missing");
  }
  const json& v = j.at(key);
  if (!v.is_number_integer()) config_error(source, key, "expected an integer, got " + v.dump());
  return v.get<int64_t>();
}

double get_number(const json& j, const char* key, const std::string& source, double fallback) {
  if (!present(j, key)) return fallback;
  const json& v = j.at(key);
  if (!v.is_number()) config_error(source, key, "expected a number, got " + v.dump());
  return v.get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& source, bool fallback) {
  if (!present(j, key)) return fallback;
  const json& v = j.at(key);
  if (!v.is_boolean()) config_error(source, key, "expected true or false, got " + v.dump());
  return v.get<bool>();
}

RopeScaling parse_rope_scaling(const json& block, const std::string& source,
                               const std::string& field) {
  RopeScaling scaling;
  if (!block.is_object()) config_error(source, field, "expected an object, got " + block.dump());
  std::string type = "default";
  if (present(block, "rope_type")) {
    type = block.at("rope_type").get<std::string>();
  } else if (present(block, "type")) {
    type = block.at("type").get<std::string>();
  }
  if (type == "default") return scaling;
  if (type == "linear") {
    scaling.type = RopeType::kLinear;
    scaling.factor = get_number(block, "factor", source, 0.0);
  } else if (type == "llama3") {
    scaling.type = RopeType::kLlama3;
    scaling.factor = get_number(block, "factor", source, 0.0);
    scaling.low_freq_factor = get_number(block, "low_freq_factor", source, 1.0);
    scaling.high_freq_factor = get_number(block, "high_freq_factor", source, 4.0);
    scaling.original_max_position_embeddings =
        get_int(block, "original_max_position_embeddings", source, 8192);
    if (scaling.high_freq_factor <= scaling.low_freq_factor) {
      config_error(source, field + ".high_freq_factor", "must be greater than low_freq_factor");
    }
  } else {
    throw_error(ErrorKind::kUnsupported,
                "rope type '" + type + "' is not supported (default, linear, llama3 are)",
                {.file = source, .field = field});
  }
  if (!(scaling.factor > 0)) config_error(source, field + ".factor", "must be positive");
  return scaling;
}

// An optional number whose explicit null means "off" and whose absence means `fallback`.
std::optional<double> get_optional_number(const json& j, const char* key, const std::string& source,
                                          std::optional<double> fallback) {
  if (!j.contains(key)) return fallback;
  if (j.at(key).is_null()) return std::nullopt;
  return get_number(j, key, source, 0.0);
}

// Gemma 2's and Gemma 3's fields, with Gemma2Config's / Gemma3TextConfig's defaults where
// config.json leaves them out.
void parse_gemma_fields(const json& j, const std::string& source, ModelConfig& c) {
  const bool gemma3 = c.model_type == "gemma3_text";
  c.query_pre_attn_scalar = get_number(j, "query_pre_attn_scalar", source, 256.0);
  const std::optional<double> attn_cap = gemma3 ? std::nullopt : std::optional<double>(50.0);
  const std::optional<double> final_cap = gemma3 ? std::nullopt : std::optional<double>(30.0);
  c.attn_logit_softcapping = get_optional_number(j, "attn_logit_softcapping", source, attn_cap);
  c.final_logit_softcapping = get_optional_number(j, "final_logit_softcapping", source, final_cap);
  if (gemma3 && c.attn_logit_softcapping) {
    // transformers' Gemma3Attention never hands it to the attention (no Gemma 3 has one), so a
    // checkpoint with it set was trained and is run without it.
    log::warn(source, ": attn_logit_softcapping is ignored for gemma3_text (as transformers does)");
    c.attn_logit_softcapping.reset();
  }
  if (!j.contains("sliding_window")) {
    c.sliding_window = 4096;
  } else if (!j.at("sliding_window").is_null()) {
    c.sliding_window = get_int(j, "sliding_window", source);
  }
  if (present(j, "layer_types")) {
    const json& types = j.at("layer_types");
    if (!types.is_array()) config_error(source, "layer_types", "expected a list of strings");
    for (const json& type : types) {
      if (!type.is_string()) config_error(source, "layer_types", "expected a list of strings");
      c.layer_types.push_back(type.get<std::string>());
    }
  } else if (gemma3) {
    // Gemma3TextConfig: every pattern-th layer (the 6th, 12th, ...) attends to everything.
    const int64_t pattern = get_int(j, "sliding_window_pattern", source, 6);
    if (pattern <= 0) config_error(source, "sliding_window_pattern", "must be positive");
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      c.layer_types.push_back((i + 1) % pattern != 0 ? "sliding_attention" : "full_attention");
    }
  } else {
    // Gemma2Config: even layers (0, 2, ...) slide, odd layers attend to everything.
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      c.layer_types.push_back(i % 2 == 0 ? "sliding_attention" : "full_attention");
    }
  }
  if (get_bool(j, "use_bidirectional_attention", source, false)) {
    throw_error(ErrorKind::kUnsupported, "bidirectional attention is not supported",
                {.file = source, .field = "use_bidirectional_attention"});
  }
}

// Gemma 3's two RoPEs. transformers 5 writes rope_parameters per layer type; earlier configs give
// rope_theta (full layers, 1e6), rope_local_base_freq (sliding layers, 1e4) and a rope_scaling
// that applies to the full layers only (linear 8 in Gemma 3 4B and larger).
void parse_gemma3_rope(const json& j, const std::string& source, ModelConfig& c) {
  json full = json::object(), local = json::object();
  if (present(j, "rope_parameters")) {
    const json& rp = j.at("rope_parameters");
    if (!rp.is_object() || (!rp.contains("full_attention") && !rp.contains("sliding_attention"))) {
      config_error(source, "rope_parameters",
                   "expected an object per layer type (full_attention, sliding_attention), got " +
                       rp.dump());
    }
    if (present(rp, "full_attention")) full = rp.at("full_attention");
    if (present(rp, "sliding_attention")) local = rp.at("sliding_attention");
  }
  if (present(j, "rope_scaling")) {
    const json& scaling = j.at("rope_scaling");
    if (!scaling.is_object() || !full.is_object()) {
      config_error(source, "rope_scaling", "expected an object, got " + scaling.dump());
    }
    full.update(scaling);
  }
  const std::string full_field =
      present(j, "rope_parameters") ? "rope_parameters.full_attention" : "rope_scaling";
  c.rope_scaling = parse_rope_scaling(full, source, full_field);
  c.rope_theta = get_number(full, "rope_theta", source, get_number(j, "rope_theta", source, 1e6));
  c.local_rope_scaling = parse_rope_scaling(local, source, "rope_parameters.sliding_attention");
  c.local_rope_theta =
      get_number(local, "rope_theta", source, get_number(j, "rope_local_base_freq", source, 1e4));
}

// A gemma3 config.json (Gemma3ForConditionalGeneration) holds the text model in text_config.
// Without a vision model that is a gemma3_text config with the outer file's dtype, token ids and
// tying; a vision model (every released Gemma 3 from 4B up) is refused: its checkpoint holds a
// vision tower and the language model's weights under language_model.*.
ModelConfig gemma3_text_config(const json& j, const std::string& source) {
  if (present(j, "vision_config")) {
    throw_error(ErrorKind::kUnsupported,
                "a Gemma 3 vision-language config (Gemma3ForConditionalGeneration: a vision tower, "
                "the language model under language_model.*) is not supported; qtrain trains Gemma "
                "3 text models (model_type gemma3_text, Gemma3ForCausalLM)",
                {.file = source, .field = "vision_config"});
  }
  if (!present(j, "text_config") || !j.at("text_config").is_object()) {
    config_error(source, "text_config",
                 "a gemma3 config holds its text model in text_config (an object)");
  }
  json text = j.at("text_config");
  if (present(text, "model_type") && text.at("model_type") != "gemma3_text") {
    throw_error(ErrorKind::kUnsupported,
                "text model " + text.at("model_type").dump() +
                    " is not supported in a gemma3 config (gemma3_text is)",
                {.file = source, .field = "text_config.model_type"});
  }
  text["model_type"] = "gemma3_text";
  for (const char* key : {"tie_word_embeddings", "torch_dtype", "dtype", "bos_token_id",
                          "eos_token_id", "pad_token_id"}) {
    if (!text.contains(key) && j.contains(key)) text[key] = j.at(key);
  }
  try {
    return ModelConfig::from_json(text, source);
  } catch (const Error& e) {
    ErrorContext context = e.context();
    context.field = context.field.empty() ? "text_config" : "text_config." + context.field;
    throw Error(e.kind(), e.message(), context);
  }
}

json rope_scaling_json(const RopeScaling& scaling) {
  switch (scaling.type) {
    case RopeType::kDefault:
      return nullptr;
    case RopeType::kLinear:
      return {{"rope_type", "linear"}, {"factor", scaling.factor}};
    case RopeType::kLlama3:
      return {{"rope_type", "llama3"},
              {"factor", scaling.factor},
              {"low_freq_factor", scaling.low_freq_factor},
              {"high_freq_factor", scaling.high_freq_factor},
              {"original_max_position_embeddings", scaling.original_max_position_embeddings}};
  }
  return nullptr;
}

// transformers 5's rope_parameters entry of one layer type.
json rope_parameters_json(double theta, const RopeScaling& scaling) {
  json entry = rope_scaling_json(scaling);
  if (entry.is_null()) entry = {{"rope_type", "default"}};
  entry["rope_theta"] = theta;
  return entry;
}

}  // namespace

double ModelConfig::attention_scale() const {
  return 1.0 /
         std::sqrt(query_pre_attn_scalar ? *query_pre_attn_scalar : static_cast<double>(head_dim));
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  try {
    return parse_config(j, source);
  } catch (const json::exception& e) {
    // A string where a number belongs (and the like) inside a nested block.
    throw_error(ErrorKind::kConfig, std::string("ill-typed value: ") + e.what(), {.file = source});
  }
}

ModelConfig ModelConfig::parse_config(const json& j, const std::string& source) {
  if (!j.is_object()) throw_error(ErrorKind::kConfig, "expected a JSON object", {.file = source});
  ModelConfig c;
  if (!present(j, "model_type")) config_error(source, "model_type", "required string is missing");
  c.model_type = j.at("model_type").get<std::string>();
  if (c.model_type == "gemma3") return gemma3_text_config(j, source);
  static const std::set<std::string> kTypes = {"llama",  "mistral",     "qwen2", "qwen3",
                                               "gemma2", "gemma3_text", "phi3"};
  if (!kTypes.count(c.model_type)) {
    throw_error(
        ErrorKind::kUnsupported,
        "model_type '" + c.model_type +
            "' is not supported (llama, mistral, qwen2, qwen3, gemma2, gemma3_text, gemma3, phi3)",
        {.file = source, .field = "model_type"});
  }
  const bool is_gemma3 = c.model_type == "gemma3_text";
  const bool is_gemma = c.model_type == "gemma2" || is_gemma3;
  c.vocab_size = get_int(j, "vocab_size", source);
  c.hidden_size = get_int(j, "hidden_size", source);
  c.intermediate_size = get_int(j, "intermediate_size", source);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", source);
  c.num_attention_heads = get_int(j, "num_attention_heads", source);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", source, c.num_attention_heads);
  const bool is_qwen3 = c.model_type == "qwen3";
  if (c.num_attention_heads <= 0) config_error(source, "num_attention_heads", "must be positive");
  // transformers' class defaults where config.json leaves a field out (Gemma2/3: 256).
  const int64_t default_head_dim =
      is_qwen3 ? 128 : (is_gemma ? 256 : c.hidden_size / c.num_attention_heads);
  c.head_dim = get_int(j, "head_dim", source, default_head_dim);
  c.rms_norm_eps = get_number(j, "rms_norm_eps", source, 1e-6);
  c.max_position_embeddings =
      get_int(j, "max_position_embeddings", source, is_gemma3 ? 131072 : 2048);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", source, is_gemma);
  c.attention_bias = get_bool(j, "attention_bias", source, false);
  c.mlp_bias = get_bool(j, "mlp_bias", source, false);
  // Gemma's MLPs and Phi-3's projections are built without biases whatever the config says.
  if (is_gemma || c.model_type == "phi3") c.mlp_bias = false;
  if (c.model_type == "phi3") c.attention_bias = false;
  c.qk_norm = is_qwen3 || is_gemma3;

  // transformers 5 nests rope settings in rope_parameters; 4.x uses rope_theta + rope_scaling.
  if (is_gemma3) {
    parse_gemma3_rope(j, source, c);
  } else if (present(j, "rope_parameters")) {
    const json& rp = j.at("rope_parameters");
    c.rope_theta = get_number(rp, "rope_theta", source, get_number(j, "rope_theta", source, 1e4));
    c.rope_scaling = parse_rope_scaling(rp, source, "rope_parameters");
  } else {
    c.rope_theta = get_number(j, "rope_theta", source, 10000.0);
    if (present(j, "rope_scaling")) {
      c.rope_scaling = parse_rope_scaling(j.at("rope_scaling"), source, "rope_scaling");
    }
  }
  if (present(j, "partial_rotary_factor") &&
      get_number(j, "partial_rotary_factor", source, 1.0) != 1.0) {
    throw_error(ErrorKind::kUnsupported, "partial rotary embeddings are not supported",
                {.file = source, .field = "partial_rotary_factor"});
  }
  // Gemma reads hidden_activation (its config.json carries hidden_act too, which it ignores).
  const char* act_key =
      is_gemma && present(j, "hidden_activation") ? "hidden_activation" : "hidden_act";
  c.hidden_act = is_gemma ? "gelu_pytorch_tanh" : "silu";
  if (present(j, act_key)) {
    const json& act = j.at(act_key);
    if (!act.is_string() || (act != "silu" && act != "gelu_pytorch_tanh")) {
      throw_error(ErrorKind::kUnsupported,
                  "activation " + act.dump() + " is not supported (silu, gelu_pytorch_tanh are)",
                  {.file = source, .field = act_key});
    }
    c.hidden_act = act.get<std::string>();
  }
  if ((c.model_type == "mistral" || c.model_type == "phi3") && present(j, "sliding_window")) {
    c.sliding_window = get_int(j, "sliding_window", source);
  }
  if (is_gemma) parse_gemma_fields(j, source, c);
  if ((c.model_type == "qwen2" || is_qwen3) && get_bool(j, "use_sliding_window", source, false)) {
    throw_error(ErrorKind::kUnsupported, "Qwen sliding-window layers are not supported",
                {.file = source, .field = "use_sliding_window"});
  }
  if (present(j, "torch_dtype")) c.torch_dtype = j.at("torch_dtype").get<std::string>();
  if (present(j, "dtype")) c.torch_dtype = j.at("dtype").get<std::string>();
  if (present(j, "bos_token_id")) c.bos_token_id = get_int(j, "bos_token_id", source);
  if (present(j, "pad_token_id")) c.pad_token_id = get_int(j, "pad_token_id", source);
  if (present(j, "eos_token_id")) {
    const json& eos = j.at("eos_token_id");
    if (eos.is_array()) {
      for (const auto& id : eos) {
        if (!id.is_number_integer()) config_error(source, "eos_token_id", "expected integers");
        c.eos_token_ids.push_back(id.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(get_int(j, "eos_token_id", source));
    }
  }
  c.validate(source);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  return from_json(read_json_file(path, "model config"), path);
}

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](int64_t value, const char* field) {
    if (value <= 0) config_error(source, field, "must be positive, got " + std::to_string(value));
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(max_position_embeddings, "max_position_embeddings");
  if (num_hidden_layers > kMaxLayers) {
    config_error(source, "num_hidden_layers",
                 "must be at most " + std::to_string(kMaxLayers) + ", got " +
                     std::to_string(num_hidden_layers));
  }
  // In double so that absurd sizes cannot overflow before they are refused; biases and norms are
  // left out (they are a rounding error at any size this bound matters for).
  const double hidden = static_cast<double>(hidden_size);
  const double attention = hidden * 2.0 *
                           static_cast<double>(num_attention_heads + num_key_value_heads) *
                           static_cast<double>(head_dim);
  const double mlp = 3.0 * hidden * static_cast<double>(intermediate_size);
  const double embeddings =
      static_cast<double>(vocab_size) * hidden * (tie_word_embeddings ? 1.0 : 2.0);
  const double parameters = embeddings + static_cast<double>(num_hidden_layers) * (attention + mlp);
  if (parameters > kMaxParameters) {
    char approx[32];
    std::snprintf(approx, sizeof(approx), "%.3g", parameters);
    config_error(source, "",
                 std::string("describes about ") + approx +
                     " parameters, more than 2^48 (check vocab_size, hidden_size, "
                     "intermediate_size, head counts and head_dim)");
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    config_error(source, "num_key_value_heads",
                 "must divide num_attention_heads (" + std::to_string(num_attention_heads) + ")");
  }
  if (head_dim % 2 != 0) config_error(source, "head_dim", "must be even for rotary embeddings");
  if (!(rms_norm_eps > 0)) config_error(source, "rms_norm_eps", "must be positive");
  if (!(rope_theta > 0)) config_error(source, "rope_theta", "must be positive");
  if (local_rope_theta && !(*local_rope_theta > 0)) {
    config_error(source, "rope_local_base_freq", "must be positive");
  }
  if (sliding_window && *sliding_window <= 0) {
    config_error(source, "sliding_window", "must be positive");
  }
  if (!layer_types.empty()) {
    if (static_cast<int64_t>(layer_types.size()) != num_hidden_layers) {
      config_error(source, "layer_types",
                   "has " + std::to_string(layer_types.size()) + " entries for " +
                       std::to_string(num_hidden_layers) + " layers");
    }
    for (const std::string& type : layer_types) {
      if (type != "sliding_attention" && type != "full_attention") {
        throw_error(
            ErrorKind::kUnsupported,
            "layer type '" + type + "' is not supported (sliding_attention, full_attention are)",
            {.file = source, .field = "layer_types"});
      }
    }
  }
  if (hidden_act != "silu" && hidden_act != "gelu_pytorch_tanh") {
    throw_error(ErrorKind::kUnsupported, "activation '" + hidden_act + "' is not supported",
                {.file = source, .field = "hidden_act"});
  }
  for (const auto& [value, field] :
       {std::pair{query_pre_attn_scalar, "query_pre_attn_scalar"},
        std::pair{attn_logit_softcapping, "attn_logit_softcapping"},
        std::pair{final_logit_softcapping, "final_logit_softcapping"}}) {
    if (value && !(*value > 0)) config_error(source, field, "must be positive");
  }
}

json ModelConfig::to_json() const {
  static const std::map<std::string, std::string> kArchitecture = {
      {"llama", "LlamaForCausalLM"},   {"mistral", "MistralForCausalLM"},
      {"qwen2", "Qwen2ForCausalLM"},   {"qwen3", "Qwen3ForCausalLM"},
      {"gemma2", "Gemma2ForCausalLM"}, {"gemma3_text", "Gemma3ForCausalLM"},
      {"phi3", "Phi3ForCausalLM"}};
  json j;
  j["architectures"] = {kArchitecture.at(model_type)};
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["hidden_act"] = hidden_act;
  if (gemma_style()) j["hidden_activation"] = hidden_act;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["rope_scaling"] = rope_scaling_json(rope_scaling);
  if (model_type == "gemma3_text") {
    // Both spellings: transformers 4.x reads rope_local_base_freq, 5.x rope_parameters (which
    // alone can give the sliding layers a scaling).
    const double local_theta = local_rope_theta.value_or(rope_theta);
    j["rope_local_base_freq"] = local_theta;
    j["rope_parameters"] = {
        {"full_attention", rope_parameters_json(rope_theta, rope_scaling)},
        {"sliding_attention",
         rope_parameters_json(local_theta, local_rope_theta ? local_rope_scaling : rope_scaling)}};
  }
  j["max_position_embeddings"] = max_position_embeddings;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  if (model_type == "llama") j["mlp_bias"] = mlp_bias;
  j["attention_dropout"] = 0.0;
  if (model_type == "mistral" || model_type == "phi3" || gemma_style()) {
    j["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
  }
  if (gemma_style()) {
    auto optional = [](const std::optional<double>& v) { return v ? json(*v) : json(nullptr); };
    // Gemma2Config types this field int (strictly checked by transformers 5).
    if (query_pre_attn_scalar && *query_pre_attn_scalar == std::floor(*query_pre_attn_scalar)) {
      j["query_pre_attn_scalar"] = static_cast<int64_t>(*query_pre_attn_scalar);
    } else {
      j["query_pre_attn_scalar"] = optional(query_pre_attn_scalar);
    }
    j["attn_logit_softcapping"] = optional(attn_logit_softcapping);
    j["final_logit_softcapping"] = optional(final_logit_softcapping);
    // Always written: transformers' defaults (alternating; every 6th layer full) differ from an
    // empty list's meaning. gemma3's list as it is: it also picks each layer's RoPE.
    std::vector<std::string> types;
    for (int64_t i = 0; i < num_hidden_layers; ++i) {
      types.push_back(layer_slides(i) ? "sliding_attention" : "full_attention");
    }
    j["layer_types"] = model_type == "gemma3_text" && !layer_types.empty() ? layer_types : types;
  }
  if (model_type == "qwen2" || model_type == "qwen3") {
    j["use_sliding_window"] = false;
    j["max_window_layers"] = num_hidden_layers;
  }
  j["torch_dtype"] = torch_dtype;
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  if (eos_token_ids.size() > 1) j["eos_token_id"] = eos_token_ids;
  if (pad_token_id) j["pad_token_id"] = *pad_token_id;
  if (gemma_style() || model_type == "phi3") {
    // Their config classes default to ids of the real vocabularies (Phi-3: 32000), which a
    // smaller vocabulary cannot hold: unset ids are written as null.
    for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
      if (!j.contains(key)) j[key] = nullptr;
    }
  }
  j["use_cache"] = true;
  return j;
}

}  // namespace qtrain

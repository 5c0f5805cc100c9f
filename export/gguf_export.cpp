#include "export/gguf_export.h"

#include "core/error.h"
#include "core/log.h"
#include "core/text.h"
#include "export/gguf_tokenizer.h"
#include "formats/safetensors/safetensors.h"
#include "models/config.h"
#include "models/hf_names.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <map>
#include <set>

namespace qtrain {
namespace {

// HF tensor name -> GGUF name (formats.md §7.3, gguf-py's tensor_mapping for gemma2/3 and phi3);
// "" for a name with no GGUF counterpart.
std::string gguf_tensor_name(const std::string& hf, const ModelConfig& config) {
  static const std::map<std::string, std::string> kTop = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm", "attn_norm"},
      {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},
      {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"},
      {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
      // phi3: llama.cpp splits the fused projections itself (attn_qkv; ffn_up holds [gate; up]).
      {"self_attn.qkv_proj", "attn_qkv"},
      {"mlp.gate_up_proj", "ffn_up"},
  };
  // gemma2/3: post_attention_layernorm follows the attention; the MLP has its own pre/post norms.
  static const std::map<std::string, std::string> kGemmaNorms = {
      {"post_attention_layernorm", "post_attention_norm"},
      {"pre_feedforward_layernorm", "ffn_norm"},
      {"post_feedforward_layernorm", "post_ffw_norm"},
  };
  if (auto it = kTop.find(hf); it != kTop.end()) return it->second;
  const std::string prefix = "model.layers.";
  if (hf.compare(0, prefix.size(), prefix) != 0) return "";
  const size_t dot = hf.find('.', prefix.size());
  const size_t last = hf.rfind('.');
  if (dot == std::string::npos || last <= dot) return "";
  const std::string layer = hf.substr(prefix.size(), dot - prefix.size());
  const std::string module = hf.substr(dot + 1, last - dot - 1);
  const std::string suffix = hf.substr(last);  // ".weight" / ".bias"
  if (config.gemma_style()) {
    if (auto norm = kGemmaNorms.find(module); norm != kGemmaNorms.end()) {
      return "blk." + layer + "." + norm->second + suffix;
    }
  }
  auto it = kLayer.find(module);
  if (it == kLayer.end()) return "";
  return "blk." + layer + "." + it->second + suffix;
}

// N of a "blk.N." name, -1 for the others.
int64_t layer_of(const std::string& gguf_name) {
  if (gguf_name.compare(0, 4, "blk.") != 0) return -1;
  return std::stoll(gguf_name.substr(4, gguf_name.find('.', 4) - 4));
}

uint32_t to_u32(int64_t value, const char* field) {
  if (value < 0 || value > std::numeric_limits<uint32_t>::max()) {
    throw_error(ErrorKind::kConfig, "does not fit a GGUF u32: " + std::to_string(value),
                {.field = field});
  }
  return static_cast<uint32_t>(value);
}

constexpr double kPi = 3.14159265358979323846;

// llama3 rope scaling as llama.cpp takes it: per-frequency divisors [head_dim/2] (formats.md
// §7.2). Frequencies in float32 like the converter; wavelength comparisons in double.
at::Tensor llama3_rope_freqs(const ModelConfig& c) {
  const RopeScaling& s = c.rope_scaling;
  const int64_t d = c.head_dim;
  const double orig = static_cast<double>(s.original_max_position_embeddings);
  const double low_wavelen = orig / s.low_freq_factor;
  const double high_wavelen = orig / s.high_freq_factor;
  at::Tensor out = at::empty({d / 2}, at::kFloat);
  float* p = out.data_ptr<float>();
  for (int64_t j = 0; j < d / 2; ++j) {
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(d);
    const float freq = 1.0f / std::pow(static_cast<float>(c.rope_theta), exponent);
    const double wavelen = 2.0 * kPi / static_cast<double>(freq);
    double divisor;
    if (wavelen < high_wavelen) {
      divisor = 1.0;
    } else if (wavelen > low_wavelen) {
      divisor = s.factor;
    } else {
      const double smooth =
          (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      divisor = 1.0 / ((1.0 - smooth) / s.factor + smooth);
    }
    p[j] = static_cast<float>(divisor);
  }
  return out;
}

void add_model_metadata(GgufWriter& w, const ModelConfig& c, const std::string& arch,
                        const std::string& name, uint32_t file_type) {
  w.add_string("general.architecture", arch);
  w.add_string("general.name", name);
  w.add_u32(arch + ".block_count", to_u32(c.num_hidden_layers, "num_hidden_layers"));
  w.add_u32(arch + ".context_length", to_u32(c.max_position_embeddings, "max_position_embeddings"));
  w.add_u32(arch + ".embedding_length", to_u32(c.hidden_size, "hidden_size"));
  w.add_u32(arch + ".feed_forward_length", to_u32(c.intermediate_size, "intermediate_size"));
  w.add_u32(arch + ".attention.head_count", to_u32(c.num_attention_heads, "num_attention_heads"));
  w.add_u32(arch + ".attention.head_count_kv",
            to_u32(c.num_key_value_heads, "num_key_value_heads"));
  if (c.rope_scaling.type == RopeType::kLinear) {
    w.add_string(arch + ".rope.scaling.type", "linear");
    w.add_f32(arch + ".rope.scaling.factor", static_cast<float>(c.rope_scaling.factor));
  }
  w.add_f32(arch + ".rope.freq_base", static_cast<float>(c.rope_theta));
  w.add_f32(arch + ".attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  w.add_u32(arch + ".attention.key_length", to_u32(c.head_dim, "head_dim"));
  w.add_u32(arch + ".attention.value_length", to_u32(c.head_dim, "head_dim"));
  w.add_u32("general.file_type", file_type);
  w.add_u32(arch + ".vocab_size", to_u32(c.vocab_size, "vocab_size"));
  w.add_u32(arch + ".rope.dimension_count", to_u32(c.head_dim, "head_dim"));
  if (arch == "gemma2") {
    w.add_f32(arch + ".attn_logit_softcapping", static_cast<float>(*c.attn_logit_softcapping));
    w.add_f32(arch + ".final_logit_softcapping", static_cast<float>(*c.final_logit_softcapping));
  }
  if (arch == "gemma3" && c.final_logit_softcapping) {
    w.add_f32(arch + ".final_logit_softcapping", static_cast<float>(*c.final_logit_softcapping));
  }
  if (c.sliding_window && arch != "llama") {
    w.add_u32(arch + ".attention.sliding_window", to_u32(*c.sliding_window, "sliding_window"));
  }
  if (arch == "gemma3" && c.sliding_window) {
    // Which layers slide, one flag per layer (llama.cpp reads a bool array before its default
    // period of 6), and the sliding layers' RoPE base.
    std::vector<bool> slides;
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) slides.push_back(c.layer_slides(i));
    w.add_bool_array(arch + ".attention.sliding_window_pattern", slides);
    w.add_f32(arch + ".rope.freq_base_swa",
              static_cast<float>(c.local_rope_theta.value_or(c.rope_theta)));
  }
}

// What llama.cpp's gemma2 graph cannot express: it always soft-caps, slides the window on even
// layers, and scales attention by head_dim^-0.5 (hidden/heads for the 27B shape).
void check_gemma2_exportable(const ModelConfig& c, const std::string& config_path) {
  auto refuse = [&](const char* field, const std::string& why) {
    throw_error(ErrorKind::kUnsupported, "GGUF export of gemma2: " + why,
                {.file = config_path, .field = field});
  };
  if (!c.attn_logit_softcapping) refuse("attn_logit_softcapping", "llama.cpp always applies it");
  if (!c.final_logit_softcapping) {
    refuse("final_logit_softcapping", "llama.cpp always applies it");
  }
  if (!c.sliding_window) refuse("sliding_window", "llama.cpp needs the window");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (c.layer_slides(i) != (i % 2 == 0)) {
      refuse("layer_types", "llama.cpp slides the window on even layers only");
    }
  }
  const double scalar = c.query_pre_attn_scalar.value_or(static_cast<double>(c.head_dim));
  if (scalar != static_cast<double>(c.head_dim) &&
      scalar != static_cast<double>(c.hidden_size / c.num_attention_heads)) {
    refuse("query_pre_attn_scalar", "llama.cpp scales by head_dim or hidden_size / heads");
  }
}

// What llama.cpp's gemma3 graph cannot express. It reads which layers slide and their RoPE base
// from the file, but rotates sliding layers unscaled, attends without biases through GELU (tanh),
// and scales attention by head_dim^-0.5 (hidden/heads for 62 layers, Gemma 3 27B), whatever
// query_pre_attn_scalar says. Without a window every layer rotates at the full layers' RoPE.
void check_gemma3_exportable(const ModelConfig& c, const std::string& config_path) {
  auto refuse = [&](const char* field, const std::string& why) {
    throw_error(ErrorKind::kUnsupported, "GGUF export of gemma3_text: " + why,
                {.file = config_path, .field = field});
  };
  if (c.hidden_act != "gelu_pytorch_tanh") {
    refuse("hidden_activation", "llama.cpp's MLP is GELU (tanh), not " + c.hidden_act);
  }
  if (c.attention_bias) refuse("attention_bias", "llama.cpp's attention has no biases");
  const bool local_scaled =
      c.local_rope_scaling.type != RopeType::kDefault &&
      !(c.local_rope_scaling.type == RopeType::kLinear && c.local_rope_scaling.factor == 1.0);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (!c.layer_uses_local_rope(i)) continue;
    if (local_scaled) {
      refuse("rope_parameters", "llama.cpp rotates the sliding layers without rope scaling");
    }
    if (!c.sliding_window &&
        (*c.local_rope_theta != c.rope_theta || c.rope_scaling.type != RopeType::kDefault)) {
      refuse("sliding_window",
             "without a window llama.cpp rotates every layer like the full_attention ones");
    }
  }
  const int64_t llama_cpp_scalar =
      c.num_hidden_layers == 62 ? c.hidden_size / c.num_attention_heads : c.head_dim;
  const double scalar = c.query_pre_attn_scalar.value_or(static_cast<double>(c.head_dim));
  if (scalar != static_cast<double>(llama_cpp_scalar)) {
    refuse("query_pre_attn_scalar",
           "llama.cpp scales attention by " + std::to_string(llama_cpp_scalar) +
               "^-0.5 (head_dim; hidden_size / heads for 62 layers), not " + c10::str(scalar) +
               "^-0.5");
  }
}

// llama.cpp builds before the per-layer pattern key assume Gemma 3's own: every sixth layer full.
void warn_gemma3_pattern(const ModelConfig& c) {
  if (!c.sliding_window) return;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (c.layer_slides(i) != (i % 6 < 5)) {
      log::warn(
          "GGUF export: the layer pattern differs from Gemma 3's (every sixth layer full); "
          "llama.cpp builds that predate gemma3.attention.sliding_window_pattern (llama-cpp-python "
          "0.3.36 reads it) run it with Gemma 3's");
      return;
    }
  }
}

std::string directory_name(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const size_t slash = dir.rfind('/');
  return slash == std::string::npos ? dir : dir.substr(slash + 1);
}

}  // namespace

std::string gguf_architecture(const std::string& model_type) {
  if (model_type == "llama" || model_type == "mistral") return "llama";
  if (model_type == "qwen2" || model_type == "qwen3" || model_type == "gemma2" ||
      model_type == "phi3") {
    return model_type;
  }
  if (model_type == "gemma3_text") return "gemma3";
  throw_error(ErrorKind::kUnsupported, "no GGUF architecture for model_type '" + model_type + "'",
              {.field = "model_type"});
}

// Rows of one head: [t, j] (t in {0,1}, j < hd/2) in HF order become [j, t] in GGUF order.
at::Tensor permute_qk_for_gguf(const at::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0);
  if (n_heads <= 0 || rows % (2 * n_heads) != 0) {
    throw_error(ErrorKind::kShape, "Q/K rows (" + std::to_string(rows) +
                                       ") are not a multiple of 2 * heads (" +
                                       std::to_string(2 * n_heads) + ")");
  }
  std::vector<int64_t> split = {n_heads, 2, rows / n_heads / 2};
  for (int64_t i = 1; i < w.dim(); ++i) split.push_back(w.size(i));
  return w.reshape(split).transpose(1, 2).contiguous().reshape(w.sizes());
}

at::Tensor unpermute_qk_from_gguf(const at::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0);
  if (n_heads <= 0 || rows % (2 * n_heads) != 0) {
    throw_error(ErrorKind::kShape, "Q/K rows (" + std::to_string(rows) +
                                       ") are not a multiple of 2 * heads (" +
                                       std::to_string(2 * n_heads) + ")");
  }
  std::vector<int64_t> split = {n_heads, rows / n_heads / 2, 2};
  for (int64_t i = 1; i < w.dim(); ++i) split.push_back(w.size(i));
  return w.reshape(split).transpose(1, 2).contiguous().reshape(w.sizes());
}

void export_gguf(const std::string& hf_dir, const std::string& out_path,
                 const GgufExportOptions& options) {
  const std::string config_path = hf_dir + "/config.json";
  const ModelConfig config = ModelConfig::from_file(config_path);
  const std::string arch = gguf_architecture(config.model_type);
  const bool permute = arch == "llama";
  const uint32_t file_type = gguf_file_type(options.outtype);
  if (config.rope_scaling.type == RopeType::kLlama3 && arch != "llama") {
    throw_error(ErrorKind::kUnsupported, "llama3 rope scaling is only exported for llama models",
                {.file = config_path, .field = "rope_scaling"});
  }
  if (arch == "gemma2") check_gemma2_exportable(config, config_path);
  if (arch == "gemma3") {
    check_gemma3_exportable(config, config_path);
    warn_gemma3_pattern(config);
  }
  if (config.sliding_window && arch == "llama") {
    log::warn("GGUF export: llama.cpp's llama architecture ignores sliding_window (",
              *config.sliding_window, "); it attends to the whole context");
  }
  if (config.sliding_window && arch == "phi3") {
    // Phi-3-mini-4k's config has a 2047-token window; the key is written all the same.
    log::warn("GGUF export: llama.cpp disables Phi-3's sliding window (", *config.sliding_window,
              "); it attends to the whole context");
  }

  GgufWriter w;
  add_model_metadata(w, config, arch, options.name.empty() ? directory_name(hf_dir) : options.name,
                     file_type);
  if (options.outtype != GgufOutType::kF32 && options.outtype != GgufOutType::kF16) {
    w.add_u32("general.quantization_version", 2);
  }
  if (!options.skip_tokenizer) add_gguf_tokenizer_metadata(w, hf_dir, config);

  if (config.rope_scaling.type == RopeType::kLlama3) {
    w.add_tensor("rope_freqs.weight", llama3_rope_freqs(config), GgmlType::kF32);
  }

  const CheckpointReader reader = CheckpointReader::open_dir(hf_dir);
  const std::vector<TensorSpec> specs = hf_tensor_specs(config);
  std::set<std::string> expected;
  for (const TensorSpec& spec : specs) {
    expected.insert(spec.name);
    if (!reader.contains(spec.name)) {
      throw_error(ErrorKind::kShape, "tensor missing from the checkpoint",
                  {.file = hf_dir, .tensor = spec.name});
    }
    const TensorInfo& info = reader.info(spec.name);
    if (info.shape != spec.shape) {
      throw_error(ErrorKind::kShape,
                  "shape " + c10::str(at::IntArrayRef(info.shape)) + " differs from config's " +
                      c10::str(at::IntArrayRef(spec.shape)),
                  {.file = reader.file_of(spec.name), .tensor = spec.name});
    }
    const std::string name = gguf_tensor_name(spec.name, config);
    if (name.empty()) {
      throw_error(ErrorKind::kInternal, "no GGUF name", {.tensor = spec.name});
    }
    int64_t heads = 0;
    if (permute && spec.name.find("self_attn.q_proj.") != std::string::npos) {
      heads = config.num_attention_heads;
    } else if (permute && spec.name.find("self_attn.k_proj.") != std::string::npos) {
      heads = config.num_key_value_heads;
    }
    GgufMixTensor mix{.name = name,
                      .n_dims = static_cast<int64_t>(spec.shape.size()),
                      .ne0 = spec.shape.back(),
                      .layer = layer_of(name),
                      .n_layers = config.num_hidden_layers,
                      .tied = config.tie_word_embeddings};
    std::optional<GgufTensorChoice> choice;
    if (options.choose) choice = options.choose(spec.name, spec.shape);
    if (choice && choice->encoded) {
      w.add_encoded_tensor(name, spec.shape, choice->type, [encode = choice->encoded, heads] {
        at::Tensor bytes = encode();
        return heads > 0 ? permute_qk_for_gguf(bytes, heads) : bytes;
      });
      continue;
    }
    const GgmlType type = choice ? choice->type : gguf_tensor_type(options.outtype, mix);
    // Gemma's norms scale by (1 + w); llama.cpp multiplies by the stored weight, so the converter
    // stores 1 + w (in float32: a bfloat16 1 + w would round w away).
    const bool unit_offset = config.gemma_style() && ends_with(spec.name, "norm.weight");
    w.add_tensor(name, spec.shape, type, [&reader, hf_name = spec.name, heads, unit_offset] {
      // Copied out of the mapping and its pages dropped, so resident memory stays near one tensor.
      at::Tensor t = heads > 0 ? permute_qk_for_gguf(reader.tensor(hf_name), heads)
                               : reader.tensor(hf_name).clone();
      if (unit_offset) t = t.to(at::kFloat) + 1.0;
      reader.evict(hf_name);
      return t;
    });
  }
  for (const std::string& name : reader.names()) {
    if (expected.count(name) || ends_with(name, "rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && config.tie_word_embeddings) continue;  // tied: no `output`
    throw_error(ErrorKind::kShape, "unexpected tensor for this config",
                {.file = reader.file_of(name), .tensor = name});
  }
  log::info("GGUF export: ", w.tensor_count(), " tensors, ", w.kv_count(), " metadata keys -> ",
            out_path);
  w.write(out_path);
}

}  // namespace qtrain

#include "export/export_readback.h"

#include "core/error.h"
#include "core/shape_string.h"
#include "core/text.h"
#include "export/ggml_decode.h"
#include "export/gguf_export.h"
#include "formats/gguf/gguf_reader.h"
#include "formats/safetensors/safetensors.h"
#include "models/hf_loader.h"
#include "models/llama.h"
#include "models/quantized_loader.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <filesystem>
#include <set>

namespace qtrain {
namespace fs = std::filesystem;
namespace {

// GGUF tensor name -> HF name for `config` (formats.md §7.3, the inverse of gguf_export's table,
// gguf-py's tensor_mapping for gemma2/3 and phi3); "" for a name with no HF counterpart.
std::string hf_tensor_name(const std::string& gguf, const ModelConfig& config) {
  static const std::map<std::string, std::string> kTop = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
  };
  static const std::map<std::string, std::string> kLayer = {
      {"attn_norm", "input_layernorm"},    {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},      {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"}, {"attn_q_norm", "self_attn.q_norm"},
      {"attn_k_norm", "self_attn.k_norm"}, {"ffn_norm", "post_attention_layernorm"},
      {"ffn_gate", "mlp.gate_proj"},       {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  // gemma2/3: post_attention_norm follows the attention; ffn_norm / post_ffw_norm wrap the MLP.
  static const std::map<std::string, std::string> kGemma = {
      {"post_attention_norm", "post_attention_layernorm"},
      {"ffn_norm", "pre_feedforward_layernorm"},
      {"post_ffw_norm", "post_feedforward_layernorm"},
  };
  // phi3: the fused projections keep their HF layout (ffn_up holds [gate; up]).
  static const std::map<std::string, std::string> kPhi3 = {
      {"attn_qkv", "self_attn.qkv_proj"},
      {"ffn_up", "mlp.gate_up_proj"},
  };
  if (auto it = kTop.find(gguf); it != kTop.end()) return it->second;
  if (gguf.compare(0, 4, "blk.") != 0) return "";
  const size_t dot = gguf.find('.', 4);
  const size_t last = gguf.rfind('.');
  if (dot == std::string::npos || last <= dot) return "";
  const std::string module = gguf.substr(dot + 1, last - dot - 1);
  const std::map<std::string, std::string>* family = config.gemma_style()         ? &kGemma
                                                     : config.fused_projections() ? &kPhi3
                                                                                  : nullptr;
  std::string hf_module;
  if (family && family->count(module)) {
    hf_module = family->at(module);
  } else if (kLayer.count(module)) {
    hf_module = kLayer.at(module);
  } else {
    return "";
  }
  return "model.layers." + gguf.substr(4, dot - 4) + "." + hf_module + gguf.substr(last);
}

// Unpacks int32 [rows, cols] holding 8 nibbles each (value j at bits 4j) along the last dim ->
// int32 [rows, cols * 8].
at::Tensor unpack_nibbles(const at::Tensor& packed) {
  const at::Tensor bits = packed.to(at::kLong).bitwise_and(0xFFFFFFFFLL);
  const at::Tensor shifts = at::arange(0, 32, 4, at::kLong);
  return bits.unsqueeze(-1)
      .bitwise_right_shift(shifts)
      .bitwise_and(0xF)
      .reshape({packed.size(0), packed.size(1) * 8})
      .to(at::kInt);
}

// One GPTQ projection -> its weight [out, in] in float32 (gptq_layout.h).
at::Tensor dequantize_gptq_projection(const CheckpointReader& checkpoint, const std::string& module,
                                      const std::string& dir) {
  for (const char* suffix : {".qzeros", ".scales", ".g_idx"}) {
    if (!checkpoint.contains(module + suffix)) {
      throw_error(ErrorKind::kShape, "GPTQ projection without its " + std::string(suffix + 1),
                  {.file = dir, .tensor = module + suffix});
    }
  }
  const at::Tensor qweight = checkpoint.tensor(module + ".qweight");  // [in/8, out]
  const at::Tensor qzeros = checkpoint.tensor(module + ".qzeros");    // [groups, out/8]
  const at::Tensor scales = checkpoint.tensor(module + ".scales").to(at::kFloat);  // [groups, out]
  const at::Tensor g_idx = checkpoint.tensor(module + ".g_idx").to(at::kLong);     // [in]
  const int64_t in = qweight.size(0) * 8, out = qweight.size(1);
  if (qzeros.size(1) * 8 != out || scales.size(1) != out || g_idx.size(0) != in) {
    throw_error(ErrorKind::kShape, "GPTQ qweight, qzeros, scales and g_idx disagree in shape",
                {.file = checkpoint.file_of(module + ".qweight"), .tensor = module + ".qweight"});
  }
  const at::Tensor codes = unpack_nibbles(qweight.t().contiguous()).t();  // [in, out]
  const at::Tensor zeros = unpack_nibbles(qzeros) + 1;                    // [groups, out]
  const at::Tensor w = scales.index_select(0, g_idx) *
                       (codes.to(at::kFloat) - zeros.index_select(0, g_idx).to(at::kFloat));
  return w.t().contiguous();
}

}  // namespace

std::map<std::string, at::Tensor> gguf_hf_tensors(const std::string& path,
                                                  const ModelConfig& config) {
  const GgufReader reader = GgufReader::open(path);
  const bool permute = gguf_architecture(config.model_type) == "llama";
  std::map<std::string, at::Tensor> out;
  for (const GgufTensorInfo& info : reader.tensors()) {
    if (info.name == "rope_freqs.weight") continue;
    const std::string name = hf_tensor_name(info.name, config);
    if (name.empty()) {
      throw_error(ErrorKind::kShape, "a GGUF tensor with no Hugging Face counterpart",
                  {.file = path, .tensor = info.name});
    }
    const std::vector<uint8_t> bytes = reader.read_bytes(info.name);
    const int64_t ne0 = info.ne[0];
    int64_t rows = 1;
    for (size_t d = 1; d < info.ne.size(); ++d) rows *= info.ne[d];
    at::Tensor t = ggml_decode_rows(info.type, bytes.data(), rows, ne0).reshape(info.shape());
    if (permute && name.find("self_attn.q_proj.") != std::string::npos) {
      t = unpermute_qk_from_gguf(t, config.num_attention_heads);
    } else if (permute && name.find("self_attn.k_proj.") != std::string::npos) {
      t = unpermute_qk_from_gguf(t, config.num_key_value_heads);
    }
    // Gemma's norms scale by (1 + w) and the exporter stores 1 + w in float32.
    if (config.gemma_style() && ends_with(name, "norm.weight")) t = t - 1.0;
    out[name] = t;
  }
  return out;
}

std::map<std::string, at::Tensor> gptq_dequantized_tensors(const std::string& dir) {
  const CheckpointReader checkpoint = CheckpointReader::open_dir(dir);
  const std::string qweight = ".qweight";
  std::map<std::string, at::Tensor> out;
  for (const std::string& name : checkpoint.names()) {
    const auto ends_with = [&](const std::string& suffix) {
      return name.size() > suffix.size() &&
             name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with(".qzeros") || ends_with(".scales") || ends_with(".g_idx")) continue;
    if (ends_with(qweight)) {
      const std::string module = name.substr(0, name.size() - qweight.size());
      out[module + ".weight"] = dequantize_gptq_projection(checkpoint, module, dir);
    } else {
      out[name] = checkpoint.tensor(name).to(at::kFloat);
    }
  }
  return out;
}

std::shared_ptr<CausalLM> causal_lm_from_tensors(const ModelConfig& config,
                                                 const std::map<std::string, at::Tensor>& tensors,
                                                 at::ScalarType dtype, c10::Device device,
                                                 const std::string& source) {
  auto model = std::make_shared<CausalLM>(config, at::TensorOptions().dtype(dtype).device(device));
  const bool tied = config.tie_word_embeddings;
  std::set<std::string> wanted;
  std::string missing, unexpected;
  torch::NoGradGuard no_grad;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) {
    if (tied && item.key() == "lm_head.weight") continue;  // shares the embeddings
    wanted.insert(item.key());
    auto it = tensors.find(item.key());
    if (it == tensors.end()) {
      missing += (missing.empty() ? "" : ", ") + item.key();
      continue;
    }
    if (it->second.sizes() != item.value().sizes()) {
      throw_error(ErrorKind::kShape,
                  "shape " + shape_string(it->second.sizes()) + " differs from the config's " +
                      shape_string(item.value().sizes()),
                  {.file = source, .tensor = item.key()});
    }
    item.value().copy_(it->second);
  }
  for (const auto& [name, t] : tensors) {
    if (!wanted.count(name)) unexpected += (unexpected.empty() ? "" : ", ") + name;
  }
  if (!missing.empty()) {
    throw_error(ErrorKind::kShape, "tensors the model needs are missing: " + missing,
                {.file = source});
  }
  if (!unexpected.empty()) {
    throw_error(ErrorKind::kShape, "tensors the model does not have: " + unexpected,
                {.file = source});
  }
  return model;
}

std::shared_ptr<CausalLM> load_export(const std::string& path, ExportFormat format,
                                      const std::string& base_model_dir, at::ScalarType dtype,
                                      c10::Device device) {
  switch (format) {
    case ExportFormat::kMergedBf16:
    case ExportFormat::kMergedFp16:
      return load_causal_lm(path, {.dtype = dtype, .device = device});
    case ExportFormat::kNf4: {
      // The directory's own quantization_config decides the 4-bit format (quantized_loader.h).
      QuantizedLoadOptions options;
      options.dtype = dtype;
      options.device = device;
      options.quant.type = QuantType::kNF4;
      options.quant.double_quant = true;
      return load_quantized_causal_lm(path, options);
    }
    case ExportFormat::kGguf: {
      const ModelConfig config = read_model_dir_config(base_model_dir);
      return causal_lm_from_tensors(config, gguf_hf_tensors(path, config), dtype, device, path);
    }
    case ExportFormat::kGptqInt4: {
      const ModelConfig config = read_model_dir_config(path);
      return causal_lm_from_tensors(config, gptq_dequantized_tensors(path), dtype, device, path);
    }
    case ExportFormat::kAdapter:
      break;
  }
  throw_error(ErrorKind::kUsage, "an adapter export is not a model on its own");
}

std::string export_readback_description(ExportFormat format) {
  switch (format) {
    case ExportFormat::kMergedBf16:
    case ExportFormat::kMergedFp16:
      return "the merged checkpoint as stored";
    case ExportFormat::kNf4:
      return "the bitsandbytes 4-bit checkpoint at its stored precision";
    case ExportFormat::kGguf:
      return "the GGUF tensors decoded to float32 as llama.cpp dequantizes them";
    case ExportFormat::kGptqInt4:
      return "the GPTQ tensors dequantized as scale * (code - zero)";
    case ExportFormat::kAdapter:
      break;
  }
  return "the adapter";
}

}  // namespace qtrain

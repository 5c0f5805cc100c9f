#include "export/gptq_export.h"

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/text.h"
#include "formats/gptq/gptq_layout.h"
#include "formats/safetensors/safetensors.h"
#include "models/model_files.h"
#include "models/quantized_loader.h"
#include "quant/int4_group.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <set>

namespace qtrain {

GptqExportReport write_gptq_int4(const MergedWeights& weights, const std::string& dir,
                                 uint64_t max_shard_bytes) {
  const int64_t g = weights.qalora_group_size();
  if (g <= 0) {
    throw_error(ErrorKind::kConfig,
                "gptq-int4 exports a QA-LoRA run (its merge stays INT4); a LoRA adapter would need "
                "re-quantizing: export nf4 or gguf instead");
  }
  // Decoder projections: GPTQ quantizes all of them, so all must have been INT4 in training.
  std::vector<std::string> projections;
  for (const std::string& name : weights.names()) {
    if (name.find(".layers.") == std::string::npos || !ends_with(name, "_proj.weight")) continue;
    if (!is_quantized_projection(name, weights.shape(name), {"lm_head"})) continue;
    projections.push_back(name);
  }
  for (const std::string& name : projections) {
    const auto& shape = weights.shape(name);
    if (shape[1] % g != 0 || shape[0] % 8 != 0) {
      throw_error(ErrorKind::kShape,
                  "GPTQ needs in_features divisible by the group (" + std::to_string(g) +
                      ") and out_features by 8",
                  {.tensor = name});
    }
  }

  GptqExportReport report;
  double rounding_sum = 0;
  std::vector<StreamedTensor> specs;
  std::map<std::string, std::string> projection_of;  // output tensor -> projection weight
  std::set<std::string> quantized(projections.begin(), projections.end());
  for (const std::string& name : weights.names()) {
    const auto& shape = weights.shape(name);
    if (!quantized.count(name)) {
      const at::ScalarType stored = weights.stored_dtype(name);
      specs.push_back({name, at::isFloatingType(stored) ? at::kHalf : stored, shape});
      continue;
    }
    const std::string module = name.substr(0, name.size() - 7);
    const int64_t out = shape[0], in = shape[1], groups = in / g;
    specs.push_back({module + ".qweight", at::kInt, {in / 8, out}});
    specs.push_back({module + ".qzeros", at::kInt, {groups, out / 8}});
    specs.push_back({module + ".scales", at::kHalf, {groups, out}});
    specs.push_back({module + ".g_idx", at::kInt, {in}});
    for (const char* part : kGptqSuffixes) {
      projection_of[module + part] = name;
    }
  }

  std::string cached_name;
  GptqProjection cached;
  auto pack = [&](const std::string& name) -> const GptqProjection& {
    if (name == cached_name) return cached;
    // The codes, scales and zeros training used: GPTQ RTN over the original weight.
    const Int4GroupTensor q = quantize_int4_group(weights.base_tensor(name), g);
    at::Tensor zeros = q.zeros;  // float32 [out, groups]
    if (weights.has_adapter(name)) {
      // D / s with D = scaling * (B A) / g, as QaLoraLinear::merge shifts the zeros.
      zeros = zeros - weights.adapter_product(name).div(static_cast<double>(g)).div(q.scales);
    }
    at::Tensor rounded = zeros.round();
    const at::Tensor off = (zeros - rounded).abs();
    report.max_zero_rounding = std::max(report.max_zero_rounding, off.max().item<double>());
    rounding_sum += off.sum().item<double>();
    report.clamped_zeros += ((rounded < 1) | (rounded > 16)).sum().item<int64_t>();
    report.groups += zeros.numel();
    ++report.projections;
    rounded = rounded.clamp(1, 16);

    cached = pack_gptq_projection(q.unpacked_codes(), rounded, q.scales, g);
    cached_name = name;
    return cached;
  };

  ShardOptions shards;
  shards.max_shard_bytes = max_shard_bytes;
  write_checkpoint_streaming(
      dir, specs,
      [&](const StreamedTensor& spec) -> at::Tensor {
        auto it = projection_of.find(spec.name);
        if (it == projection_of.end()) return weights.tensor(spec.name).to(spec.dtype);
        const GptqProjection& p = pack(it->second);
        if (ends_with(spec.name, ".qweight")) return p.qweight;
        if (ends_with(spec.name, ".qzeros")) return p.qzeros;
        if (ends_with(spec.name, ".scales")) return p.scales;
        return p.g_idx;
      },
      shards);
  report.mean_zero_rounding = report.groups > 0 ? rounding_sum / report.groups : 0.0;

  const nlohmann::json quantize_config = gptq_quantize_config(g);
  nlohmann::json config = weights.config_json();
  config["torch_dtype"] = "float16";
  if (config.contains("dtype")) config["dtype"] = "float16";
  config["quantization_config"] = quantize_config;
  write_file_atomically(dir + "/config.json", config.dump(2) + "\n");
  write_file_atomically(dir + "/quantize_config.json", quantize_config.dump(2) + "\n");
  copy_model_side_files(weights.model_dir(), dir);
  if (report.clamped_zeros > 0) {
    log::warn("gptq-int4: ", report.clamped_zeros,
              " merged zero points fell outside 1..16 and were clamped");
  }
  return report;
}

}  // namespace qtrain

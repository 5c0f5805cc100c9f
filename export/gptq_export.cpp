#include "export/gptq_export.h"

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/text.h"
#include "export/qalora_int4.h"
#include "formats/gptq/gptq_layout.h"
#include "formats/safetensors/safetensors.h"
#include "models/model_files.h"
#include "models/quantized_loader.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <set>

namespace qtrain {

double GptqExportReport::rms_update() const {
  return fit.groups > 0 ? std::sqrt(fit.sum_sq_update / fit.groups) : 0.0;
}

double GptqExportReport::rms_mean_error_fitted() const {
  return fit.groups > 0 ? std::sqrt(fit.mean_sse_fitted / fit.groups) : 0.0;
}

double GptqExportReport::rms_mean_error_rounded() const {
  return fit.groups > 0 ? std::sqrt(fit.mean_sse_rounded / fit.groups) : 0.0;
}

double GptqExportReport::rms_error_fitted() const {
  return fit.weights > 0 ? std::sqrt(fit.sse_fitted / fit.weights) : 0.0;
}

double GptqExportReport::rms_error_rounded() const {
  return fit.weights > 0 ? std::sqrt(fit.sse_rounded / fit.weights) : 0.0;
}

std::string GptqExportReport::summary() const {
  char line[1024];
  std::snprintf(
      line, sizeof(line),
      "%lld projections, %lld groups (%lld refit, %lld scales floored to 2^-14). The update "
      "training learned moves group means by RMS %.3g; the export misses them by RMS %.3g, "
      "its weights the trained model's by RMS %.3g (max %.3g). Rounding the zeros alone would "
      "have missed the means by RMS %.3g (the weights by %.3g), dropped the update of %.1f%% of "
      "the groups and clamped %lld zeros",
      static_cast<long long>(projections), static_cast<long long>(fit.groups),
      static_cast<long long>(fit.refit_groups), static_cast<long long>(fit.floored_scales),
      rms_update(), rms_mean_error_fitted(), rms_error_fitted(), fit.max_error_fitted,
      rms_mean_error_rounded(), rms_error_rounded(),
      fit.groups > 0 ? 100.0 * fit.dropped_rounded / fit.groups : 0.0,
      static_cast<long long>(fit.clamped_rounded));
  return line;
}

GptqExportReport write_gptq_int4(const MergedWeights& weights, const std::string& dir,
                                 uint64_t max_shard_bytes) {
  const int64_t g = weights.qalora_group_size();
  if (g <= 0) {
    throw_error(ErrorKind::kConfig,
                "gptq-int4 exports a QA-LoRA run (its merge stays INT4); a LoRA adapter would need "
                "re-quantizing: export nf4 or gguf instead");
  }
  // Decoder projections: GPTQ quantizes all of them, so all must have been INT4 in training.
  const std::vector<std::string> projections = qalora_int4_projections(weights, {"lm_head"});
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
    const QaLoraInt4Weight w = qalora_int4_weight(weights, name);
    const at::Tensor merged = w.merged();
    const GptqFit rounded = gptq_round_zeros(w.base.unpacked_codes(), w.base.scales, w.base.zeros,
                                             w.delta, &report.fit);
    report.fit.sum_sq_update += w.delta.square().sum().item<double>();
    // The search holds 17 candidates per group: on a GPU when there is one.
    const c10::Device device =
        at::hasCUDA() && at::getNumGPUs() > 0 ? c10::Device(c10::kCUDA) : c10::Device(c10::kCPU);
    const GptqFit on_device = {rounded.codes.to(device), rounded.zeros.to(device),
                               rounded.scales.to(device)};
    const GptqFit fitted = fit_gptq_groups(merged.to(device), w.merged_original().to(device), g,
                                           on_device, &report.fit);
    const GptqFit fit = {fitted.codes.cpu(), fitted.zeros.cpu(), fitted.scales.cpu()};
    ++report.projections;
    cached = pack_gptq_projection(fit.codes, fit.zeros, fit.scales, g);
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

  const nlohmann::json quantize_config = gptq_quantize_config(g);
  nlohmann::json config = weights.config_json();
  config["torch_dtype"] = "float16";
  if (config.contains("dtype")) config["dtype"] = "float16";
  config["quantization_config"] = quantize_config;
  write_file_atomically(dir + "/config.json", config.dump(2) + "\n");
  write_file_atomically(dir + "/quantize_config.json", quantize_config.dump(2) + "\n");
  copy_model_side_files(weights.model_dir(), dir);
  if (report.fit.floored_scales > 0) {
    log::warn("gptq-int4: ", report.fit.floored_scales,
              " groups of near-zero weights needed a scale below fp16's smallest normal value; "
              "their scales were raised to 2^-14");
  }
  return report;
}

}  // namespace qtrain

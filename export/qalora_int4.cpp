#include "export/qalora_int4.h"

#include "core/error.h"
#include "core/text.h"
#include "export/merged_weights.h"
#include "models/quantized_loader.h"

#include <ATen/ATen.h>

namespace qtrain {

at::Tensor QaLoraInt4Weight::merged() const {
  const int64_t out = base.shape[0], in = base.shape[1], groups = base.num_groups();
  const at::Tensor w = base.dequantize(at::kFloat).view({out, groups, base.group_size});
  return (w + delta.unsqueeze(-1)).view({out, in});
}

at::Tensor QaLoraInt4Weight::merged_original() const {
  return original + delta.repeat_interleave(base.group_size, 1);
}

std::vector<std::string> qalora_int4_projections(const MergedWeights& weights,
                                                 const std::vector<std::string>& skip_modules) {
  std::vector<std::string> projections;
  for (const std::string& name : weights.names()) {
    if (name.find(".layers.") == std::string::npos || !ends_with(name, "_proj.weight")) continue;
    if (!is_quantized_projection(name, weights.shape(name), skip_modules)) continue;
    projections.push_back(name);
  }
  return projections;
}

QaLoraInt4Weight qalora_int4_weight(const MergedWeights& weights, const std::string& name) {
  const int64_t g = weights.qalora_group_size();
  if (g <= 0) {
    throw_error(ErrorKind::kInternal, "not a QA-LoRA merge", {.tensor = name});
  }
  QaLoraInt4Weight w;
  w.original = weights.base_tensor(name).to(at::kFloat);
  w.base = quantize_int4_group(w.original, g);
  w.delta = weights.has_adapter(name)
                ? weights.adapter_product(name).div(static_cast<double>(g))
                : at::zeros({w.base.shape[0], w.base.num_groups()}, at::kFloat);
  return w;
}

}  // namespace qtrain

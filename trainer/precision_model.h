// A model directory loaded with its base weights at a named precision, for evaluation and
// generation (qeval, qgen): the dense formats, bitsandbytes' quantized ones and QA-LoRA's INT4.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace qtrain {

class CausalLM;
struct QuantizationSection;

struct PrecisionModel {
  std::shared_ptr<CausalLM> model;
  // Bytes of the base's weights at this precision (quantized codes and scales included): what a
  // GPU would hold, whatever compute dtype the forward pass uses.
  int64_t weight_bytes = 0;
};

// How the quantized precisions are built. The defaults are bitsandbytes' usual ones.
struct PrecisionOptions {
  int64_t int4_group_size = 32;  // int4
  // Projections kept dense in the compute dtype by int8 / nf4 / fp4 / int4 (is_skipped_module
  // rules); [] quantizes lm_head too.
  std::vector<std::string> skip_modules = {"lm_head"};
  int64_t blocksize = 64;    // int8 / nf4 / fp4
  bool double_quant = true;  // nf4 / fp4 (int8 never)
};

// The base as a qtrain run built it, from the run recipe's quantization section: its
// skip_modules for every quantized precision (a run trained with a quantized lm_head is
// evaluated with one), its blocksize and double_quant when `precision` is its type, its
// group_size when both are int4. Otherwise PrecisionOptions' defaults.
PrecisionOptions precision_options_of(const QuantizationSection& quantization,
                                      const std::string& precision);

// fp32 | bf16 | fp16 | int8 | nf4 | fp4 | int4 (group-wise), quantized as `options` say. Dense
// weights are stored at the precision and computed in `compute_dtype`; the skipped modules stay
// dense in the quantized ones. Dense precisions keep their values exactly (weights rounded to
// bf16/fp16, then held in the compute dtype), so a float32 forward shows the precision's effect
// alone. Throws Error(kUsage) for an unknown precision, and the loaders' errors (an invalid
// blocksize, group size or combination among them).
PrecisionModel load_model_at_precision(const std::string& dir, const std::string& precision,
                                       at::ScalarType compute_dtype, c10::Device device,
                                       const PrecisionOptions& options);
// The defaults with `int4_group_size`.
PrecisionModel load_model_at_precision(const std::string& dir, const std::string& precision,
                                       at::ScalarType compute_dtype, c10::Device device,
                                       int64_t int4_group_size = 32);

const std::vector<std::string>& model_precisions();

}  // namespace qtrain

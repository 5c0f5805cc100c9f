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

struct PrecisionModel {
  std::shared_ptr<CausalLM> model;
  // Bytes of the base's weights at this precision (quantized codes and scales included): what a
  // GPU would hold, whatever compute dtype the forward pass uses.
  int64_t weight_bytes = 0;
};

// fp32 | bf16 | fp16 | int8 | nf4 | fp4 (bitsandbytes, blocks of 64, double quant for 4-bit) |
// int4 (group-wise, `int4_group_size`). Dense weights are stored at the precision and computed
// in `compute_dtype`; lm_head stays dense in the quantized ones. Dense precisions keep their values
// exactly (weights rounded to bf16/fp16, then held in the compute dtype), so a float32 forward
// shows the precision's effect alone. Throws Error(kUsage) for an unknown precision, and the
// loaders' errors.
PrecisionModel load_model_at_precision(const std::string& dir, const std::string& precision,
                                       at::ScalarType compute_dtype, c10::Device device,
                                       int64_t int4_group_size = 32);

const std::vector<std::string>& model_precisions();

}  // namespace qtrain

// A dense HF model directory re-written as a bitsandbytes 4-bit one (`*-bnb-4bit`,
// reference/formats.md §1.4) that transformers + bitsandbytes load as it is; formats/bnb reads it
// back.
#pragma once

#include "quant/quantized_tensor.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

struct BnbSaveOptions {
  // Linear modules kept dense, matched exactly or as trailing dotted components ("lm_head",
  // "mlp.down_proj"). Anything beyond lm_head is written to llm_int8_skip_modules so that
  // transformers leaves it dense too.
  std::vector<std::string> skip_modules = {"lm_head"};
  c10::Device device = c10::kCPU;  // where quantize runs
  uint64_t max_shard_bytes = 5'000'000'000ULL;
};

// Writes a bitsandbytes 4-bit model directory `out_dir` (which must not exist or be empty) from
// the dense HF directory `src_hf_dir`: every Linear weight (2-D `<module>.weight` other than the
// embeddings and the skipped modules) quantized with `quant` (nf4/fp4) and stored as bnb's state
// entries; all other tensors copied in their dtype; config.json with a quantization_config for
// `compute_dtype`; tokenizer and generation files copied. Streams one tensor at a time from the
// mmap'd shards; host memory holds only the 4-bit results. The directory appears complete or
// not at all (staged next to it, then renamed).
// Throws Error(kIo) for an unusable output, Error(kConfig) for a bad config, and whatever reading
// the source throws.
void save_bnb_4bit_checkpoint(const std::string& src_hf_dir, const std::string& out_dir,
                              const QuantConfig& quant, at::ScalarType compute_dtype,
                              const BnbSaveOptions& options = {});

}  // namespace qtrain

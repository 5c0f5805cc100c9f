// A quantized weight: codes, scales and the state needed to dequantize it, in bitsandbytes'
// layout so it saves to and loads from transformers' 4-bit checkpoints unchanged.
#pragma once

#include "quant/absmax_cache.h"
#include "quant/blockwise.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

std::string quant_type_name(QuantType type);              // "nf4", "fp4", "int8"
QuantType quant_type_from_name(const std::string& name);  // throws Error(kConfig)

struct QuantConfig {
  QuantType type = QuantType::kNF4;
  int64_t blocksize = 64;     // 4-bit: 32..4096 powers of two; int8: 64..4096
  bool double_quant = false;  // bnb compress_statistics / bnb_4bit_use_double_quant (4-bit only)
  // Throws Error(kConfig) naming the field for an unsupported blocksize or combination.
  void validate() const;
};

// bitsandbytes' double quantization of the absmax vector (formats.md §1.3):
// absmax[b] = code[codes[b]] * absmax[b / blocksize] + offset.
struct NestedAbsmax {
  at::Tensor codes;   // uint8 [nblocks]
  at::Tensor absmax;  // float32 [ceil(nblocks / blocksize)]
  at::Tensor code;    // float32 [256], the signed dynamic map
  float offset = 0;   // mean of the original absmax
  int64_t blocksize = 256;
};

// float32 [nblocks]: the absmax of formats.md §1.3, decoded now (QuantizedTensor::block_absmax
// keeps it in the weight's cache).
at::Tensor decode_nested_absmax(const NestedAbsmax& nested);

struct QuantizedTensor {
  QuantType type = QuantType::kNF4;
  std::vector<int64_t> shape;            // original shape, e.g. Linear [out, in]
  at::ScalarType dtype = at::kBFloat16;  // original dtype (bnb quant_state "dtype")
  int64_t blocksize = 64;
  at::Tensor data;    // 4-bit: uint8 [(n+1)/2, 1] packed codes; int8: int8 [n]
  at::Tensor absmax;  // float32 [nblocks]; undefined when nested
  std::optional<NestedAbsmax> nested;
  at::Tensor code;  // 4-bit: float32 [16] quant_map; undefined for int8
  // Opt-in: set it (std::make_shared<AbsmaxCache>()) and the decoded nested absmax of a CPU
  // weight is filled on first use and shared by this weight's copies (quant/absmax_cache.h:
  // 4 bytes per block, 1/8 of the codes at blocksize 64, about 10% off a dequantize). Null (the
  // default, as bitsandbytes does): decoded on every call, so a base weighs what qmem says.
  // to() gives the result a fresh one when this weight has one.
  std::shared_ptr<AbsmaxCache> absmax_cache;

  int64_t numel() const;
  int64_t num_blocks() const;
  c10::Device device() const { return data.device(); }
  // Exact bytes of storage: data + absmax (float32), or nested codes + nested absmax + offset;
  // code tables included.
  int64_t nbytes() const;
  // float32 [nblocks], undoing double quantization when present (from absmax_cache where it
  // applies). Shared with the weight: never write to it.
  at::Tensor block_absmax() const;
  // float32 [nblocks] of a nested weight from absmax_cache, decoded on the first call; undefined
  // where the cache does not apply (no nested state, not on the CPU, or the cache holds a copy's
  // other nested tensors, see AbsmaxCache::get).
  at::Tensor cached_block_absmax() const;
  // The weight in `out_dtype` with the original shape.
  at::Tensor dequantize(at::ScalarType out_dtype = at::kBFloat16) const;
  QuantizedTensor to(const c10::Device& device) const;
};

// Quantizes `weight` (any float dtype; CPU or CUDA, the result lives on the same device).
QuantizedTensor quantize(const at::Tensor& weight, const QuantConfig& config);

}  // namespace qtrain

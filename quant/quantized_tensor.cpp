#include "quant/quantized_tensor.h"

#include "core/error.h"
#include "quant/codebooks.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <tuple>

namespace qtrain {
namespace {

// bitsandbytes hardcodes the blocksize of the nested absmax quantization.
constexpr int64_t kNestedBlocksize = 256;

bool is_4bit(QuantType type) {
  return type == QuantType::kNF4 || type == QuantType::kFP4;
}

bool is_power_of_two_in(int64_t value, int64_t lo, int64_t hi) {
  return value >= lo && value <= hi && (value & (value - 1)) == 0;
}

int64_t tensor_bytes(const at::Tensor& t) {
  return t.defined() ? t.numel() * t.element_size() : 0;
}

}  // namespace

at::Tensor decode_nested_absmax(const NestedAbsmax& nested) {
  // Two float32 steps, like bitsandbytes: dequantize, then add the offset (no fused multiply-add).
  at::Tensor centered = dequantize_blockwise_8bit(nested.codes, nested.absmax, nested.code,
                                                  nested.blocksize, at::kFloat);
  return centered + nested.offset;
}

std::string quant_type_name(QuantType type) {
  switch (type) {
    case QuantType::kNF4:
      return "nf4";
    case QuantType::kFP4:
      return "fp4";
    case QuantType::kInt8:
      return "int8";
  }
  throw_error(ErrorKind::kInternal, "unknown QuantType");
}

QuantType quant_type_from_name(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4, QuantType::kInt8}) {
    if (lower == quant_type_name(type)) return type;
  }
  throw_error(ErrorKind::kConfig,
              "unknown quantization type '" + name + "' (expected nf4, fp4 or int8)",
              {.field = "quant_type"});
}

void QuantConfig::validate() const {
  if (is_4bit(type) && !is_power_of_two_in(blocksize, 32, 4096)) {
    throw_error(ErrorKind::kConfig,
                "blocksize " + std::to_string(blocksize) + " is not supported for " +
                    quant_type_name(type) + " (a power of two from 32 to 4096)",
                {.field = "blocksize"});
  }
  if (type == QuantType::kInt8 && !is_power_of_two_in(blocksize, 64, 4096)) {
    throw_error(ErrorKind::kConfig,
                "blocksize " + std::to_string(blocksize) +
                    " is not supported for int8 (a power of two from 64 to 4096)",
                {.field = "blocksize"});
  }
  if (double_quant && !is_4bit(type)) {
    throw_error(ErrorKind::kConfig,
                "double_quant (nested absmax quantization) applies to nf4 and fp4 only, not " +
                    quant_type_name(type),
                {.field = "double_quant"});
  }
}

int64_t QuantizedTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t QuantizedTensor::num_blocks() const {
  return (numel() + blocksize - 1) / blocksize;
}

int64_t QuantizedTensor::nbytes() const {
  int64_t bytes = tensor_bytes(data) + tensor_bytes(absmax) + tensor_bytes(code);
  if (nested) {
    bytes += tensor_bytes(nested->codes) + tensor_bytes(nested->absmax) +
             tensor_bytes(nested->code) + static_cast<int64_t>(sizeof(nested->offset));
  }
  return bytes;
}

at::Tensor QuantizedTensor::block_absmax() const {
  if (!nested) return absmax;
  at::Tensor cached = cached_block_absmax();
  return cached.defined() ? cached : decode_nested_absmax(*nested);
}

at::Tensor QuantizedTensor::cached_block_absmax() const {
  if (!nested || !absmax_cache) return at::Tensor();
  const NestedAbsmax& state = *nested;
  return absmax_cache->get(state, [&state] { return decode_nested_absmax(state); });
}

at::Tensor QuantizedTensor::dequantize(at::ScalarType out_dtype) const {
  at::Tensor flat = type == QuantType::kInt8 ? dequantize_int8(data, absmax, blocksize, out_dtype)
                                             : dequantize_4bit(data, block_absmax(), code, numel(),
                                                               blocksize, out_dtype);
  return flat.view(shape);
}

QuantizedTensor QuantizedTensor::to(const c10::Device& device) const {
  auto move = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  QuantizedTensor out = *this;
  out.absmax_cache = absmax_cache ? std::make_shared<AbsmaxCache>() : nullptr;
  out.data = move(data);
  out.absmax = move(absmax);
  out.code = move(code);
  if (nested) {
    out.nested->codes = move(nested->codes);
    out.nested->absmax = move(nested->absmax);
    out.nested->code = move(nested->code);
  }
  return out;
}

QuantizedTensor quantize(const at::Tensor& weight, const QuantConfig& config) {
  config.validate();
  if (!weight.defined() || !at::isFloatingType(weight.scalar_type())) {
    throw_error(ErrorKind::kUnsupported, "quantize: the weight must be a floating-point tensor");
  }
  QuantizedTensor q;
  q.type = config.type;
  q.shape = weight.sizes().vec();
  q.dtype = weight.scalar_type();
  q.blocksize = config.blocksize;
  if (config.type == QuantType::kInt8) {
    std::tie(q.data, q.absmax) = quantize_int8(weight, config.blocksize);
    return q;
  }
  at::Tensor packed;
  std::tie(packed, q.absmax) = quantize_4bit(weight, config.type, config.blocksize);
  q.data = packed.view({-1, 1});  // bitsandbytes' [(n+1)/2, 1]
  q.code = (config.type == QuantType::kNF4 ? nf4_code() : fp4_code()).to(weight.device());
  if (config.double_quant) {
    NestedAbsmax nested;
    const at::Tensor mean =
        q.absmax.numel() > 0 ? q.absmax.mean() : at::zeros({}, q.absmax.options());
    nested.offset = mean.item<float>();
    nested.code = dynamic_code_signed().to(weight.device());
    nested.blocksize = kNestedBlocksize;
    std::tie(nested.codes, nested.absmax) =
        quantize_blockwise_8bit(q.absmax - mean, nested.code, kNestedBlocksize);
    q.nested = std::move(nested);
    q.absmax = at::Tensor();
  }
  return q;
}

}  // namespace qtrain

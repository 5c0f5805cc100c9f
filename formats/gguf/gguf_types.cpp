#include "formats/gguf/gguf_types.h"

#include "core/error.h"
#include "quant/ggml/q4_0.h"
#include "quant/ggml/q4_1.h"
#include "quant/ggml/q4_k.h"
#include "quant/ggml/q6_k.h"
#include "quant/ggml/q8_0.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

namespace qtrain {
namespace {

// Block geometry from ggml-common.h (reference/formats.md §7.5).
const GgmlTypeTraits kTraits[] = {
    {GgmlType::kF32, "F32", 1, 4, false, true},
    {GgmlType::kF16, "F16", 1, 2, false, true},
    {GgmlType::kQ4_0, "Q4_0", 32, 18, true, true},
    {GgmlType::kQ4_1, "Q4_1", 32, 20, true, true},
    {GgmlType::kQ5_0, "Q5_0", 32, 22, true, true},
    {GgmlType::kQ5_1, "Q5_1", 32, 24, true, false},
    {GgmlType::kQ8_0, "Q8_0", 32, 34, true, true},
    {GgmlType::kQ8_1, "Q8_1", 32, 36, true, false},
    {GgmlType::kQ2_K, "Q2_K", 256, 84, true, false},
    {GgmlType::kQ3_K, "Q3_K", 256, 110, true, false},
    {GgmlType::kQ4_K, "Q4_K", 256, 144, true, true},
    {GgmlType::kQ5_K, "Q5_K", 256, 176, true, false},
    {GgmlType::kQ6_K, "Q6_K", 256, 210, true, true},
    {GgmlType::kQ8_K, "Q8_K", 256, 292, true, false},
    {GgmlType::kBF16, "BF16", 1, 2, false, false},
};

// rows [n, ne0] float32 contiguous -> out. One function per type; quantized types encode each
// block of `block_elems` floats into `block_bytes` bytes (quantize_*: n floats -> n/block blocks).
void encode_f32(const at::Tensor& rows, uint8_t* out) {
  std::memcpy(out, rows.data_ptr<float>(), rows.numel() * sizeof(float));
}

void encode_f16(const at::Tensor& rows, uint8_t* out) {
  at::Tensor half = rows.to(at::kHalf);
  std::memcpy(out, half.data_ptr<at::Half>(), half.numel() * sizeof(at::Half));
}

using RowQuantizer = void (*)(const float*, uint8_t*, int64_t);

RowQuantizer quantizer_of(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
      return quantize_q8_0;
    case GgmlType::kQ4_0:
      return quantize_q4_0;
    case GgmlType::kQ4_1:
      return quantize_q4_1;
    case GgmlType::kQ5_0:
      return quantize_q5_0;
    case GgmlType::kQ4_K:
      return quantize_q4_k;
    case GgmlType::kQ6_K:
      return quantize_q6_k;
    default:
      return nullptr;
  }
}

// Blocks are independent, so rows are encoded in parallel with the same bytes as one thread.
void encode_quantized(const GgmlTypeTraits& t, RowQuantizer quantize, const at::Tensor& rows,
                      uint8_t* out) {
  const int64_t n = rows.numel();
  if (n % t.block_elems != 0) {
    throw_error(ErrorKind::kShape, std::string(t.name) + " needs rows that are a multiple of " +
                                       std::to_string(t.block_elems) + " values");
  }
  const float* x = rows.data_ptr<float>();
  const int64_t blocks = n / t.block_elems;
  const int64_t grain = std::max<int64_t>(1, 16384 / t.block_elems);
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    quantize(x + begin * t.block_elems, out + begin * t.block_bytes, (end - begin) * t.block_elems);
  });
}

}  // namespace

const GgmlTypeTraits& ggml_type_traits(GgmlType type) {
  for (const auto& t : kTraits) {
    if (t.type == type) return t;
  }
  throw_error(ErrorKind::kUnsupported,
              "unknown ggml type id " + std::to_string(static_cast<uint32_t>(type)));
}

std::string ggml_type_name(GgmlType type) {
  return ggml_type_traits(type).name;
}

uint64_t ggml_nbytes(GgmlType type, const std::vector<int64_t>& ne) {
  const GgmlTypeTraits& t = ggml_type_traits(type);
  if (ne.empty()) return 0;
  if (ne[0] % t.block_elems != 0) {
    throw_error(ErrorKind::kShape, std::string(t.name) + " needs ne[0] (" + std::to_string(ne[0]) +
                                       ") to be a multiple of " + std::to_string(t.block_elems));
  }
  uint64_t bytes = static_cast<uint64_t>(ne[0] / t.block_elems) * t.block_bytes;
  for (size_t i = 1; i < ne.size(); ++i) bytes *= static_cast<uint64_t>(ne[i]);
  return bytes;
}

void ggml_encode_rows(GgmlType type, const at::Tensor& rows, uint8_t* out) {
  const GgmlTypeTraits& t = ggml_type_traits(type);
  if (!at::isFloatingType(rows.scalar_type())) {
    throw_error(ErrorKind::kUnsupported, std::string("cannot encode a ") +
                                             c10::toString(rows.scalar_type()) + " tensor as " +
                                             t.name + " (floating-point input needed)");
  }
  at::Tensor f32 = rows.to(at::kCPU).to(at::kFloat).contiguous();
  switch (type) {
    case GgmlType::kF32:
      return encode_f32(f32, out);
    case GgmlType::kF16:
      return encode_f16(f32, out);
    default:
      if (RowQuantizer quantize = quantizer_of(type))
        return encode_quantized(t, quantize, f32, out);
      throw_error(ErrorKind::kUnsupported,
                  std::string("qtrain cannot write ggml type ") + t.name + " yet");
  }
}

}  // namespace qtrain

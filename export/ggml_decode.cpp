#include "export/ggml_decode.h"

#include "core/error.h"
#include "quant/ggml/ggml_fp16.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>

namespace qtrain {
namespace {

float fp16_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return ggml_fp16_value(bits);
}

// One block of each type: `b` its bytes, `y` its block_elems values.
void decode_q8_0(const uint8_t* b, float* y) {
  const float d = fp16_at(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<int8_t>(b[2 + j]) * d;
}

void decode_q4_0(const uint8_t* b, float* y) {
  const float d = fp16_at(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = ((b[2 + j] & 0xF) - 8) * d;
    y[j + 16] = ((b[2 + j] >> 4) - 8) * d;
  }
}

void decode_q4_1(const uint8_t* b, float* y) {
  const float d = fp16_at(b), m = fp16_at(b + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = (b[4 + j] & 0xF) * d + m;
    y[j + 16] = (b[4 + j] >> 4) * d + m;
  }
}

// Q5_0 / Q5_1: the fifth bit of value j in bit j of the u32 qh, after the scale (and offset).
void decode_q5(const uint8_t* b, float* y, bool with_offset) {
  const float d = fp16_at(b), m = with_offset ? fp16_at(b + 2) : 0.0f;
  const uint8_t* p = b + (with_offset ? 4 : 2);
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const uint8_t* qs = p + 4;
  for (int j = 0; j < 16; ++j) {
    const int q0 = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
    const int q1 = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    if (with_offset) {
      y[j] = q0 * d + m;
      y[j + 16] = q1 * d + m;
    } else {
      y[j] = (q0 - 16) * d;
      y[j + 16] = (q1 - 16) * d;
    }
  }
}

void decode_q4_k(const uint8_t* b, float* y) {
  const float d = fp16_at(b), dmin = fp16_at(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    const int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    const int m = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    const float d1 = d * sc, m1 = dmin * m;
    for (int l = 0; l < 32; ++l) {
      const uint8_t byte = qs[32 * (j / 2) + l];
      y[32 * j + l] = d1 * (j % 2 == 0 ? byte & 0xF : byte >> 4) - m1;
    }
  }
}

void decode_q6_k(const uint8_t* b, float* y) {
  const float d = fp16_at(b + 208);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = b + 64 * h;
    const uint8_t* qh = b + 128 + 32 * h;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * h;
    float* out = y + 128 * h;
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      out[l] = d * sc[is + 0] * q1;
      out[l + 32] = d * sc[is + 2] * q2;
      out[l + 64] = d * sc[is + 4] * q3;
      out[l + 96] = d * sc[is + 6] * q4;
    }
  }
}

using BlockDecoder = void (*)(const uint8_t*, float*);

BlockDecoder decoder_of(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
      return decode_q8_0;
    case GgmlType::kQ4_0:
      return decode_q4_0;
    case GgmlType::kQ4_1:
      return decode_q4_1;
    case GgmlType::kQ5_0:
      return [](const uint8_t* b, float* y) { decode_q5(b, y, false); };
    case GgmlType::kQ5_1:
      return [](const uint8_t* b, float* y) { decode_q5(b, y, true); };
    case GgmlType::kQ4_K:
      return decode_q4_k;
    case GgmlType::kQ6_K:
      return decode_q6_k;
    default:
      throw_error(ErrorKind::kUnsupported,
                  "no decoder for GGUF tensor type " + ggml_type_name(type) +
                      " (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K)");
  }
}

}  // namespace

at::Tensor ggml_decode_rows(GgmlType type, const uint8_t* data, int64_t rows, int64_t ne0) {
  const GgmlTypeTraits& traits = ggml_type_traits(type);
  if (ne0 % traits.block_elems != 0) {
    throw_error(ErrorKind::kShape, "a row of " + std::to_string(ne0) + " values is not whole " +
                                       traits.name + " blocks of " +
                                       std::to_string(traits.block_elems));
  }
  const int64_t n = rows * ne0;
  if (type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16) {
    const at::ScalarType stored = type == GgmlType::kF32   ? at::kFloat
                                  : type == GgmlType::kF16 ? at::kHalf
                                                           : at::kBFloat16;
    at::Tensor raw = at::empty({rows, ne0}, at::TensorOptions().dtype(stored));
    std::memcpy(raw.data_ptr(), data, static_cast<size_t>(n) * traits.block_bytes);
    return raw.to(at::kFloat);
  }
  const BlockDecoder decode = decoder_of(type);
  at::Tensor out = at::empty({rows, ne0}, at::kFloat);
  float* y = out.data_ptr<float>();
  const int64_t blocks = n / traits.block_elems;
  at::parallel_for(0, blocks, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      decode(data + i * traits.block_bytes, y + i * traits.block_elems);
    }
  });
  return out;
}

}  // namespace qtrain

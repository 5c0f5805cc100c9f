#include "formats/gguf/gguf_mix.h"

#include "core/error.h"

#include <algorithm>
#include <cctype>

namespace qtrain {
namespace {

struct OutTypeInfo {
  GgufOutType type;
  const char* name;
  uint32_t file_type;
  GgmlType base;
};

const OutTypeInfo kOutTypes[] = {
    {GgufOutType::kF32, "F32", 0, GgmlType::kF32},
    {GgufOutType::kF16, "F16", 1, GgmlType::kF16},
    {GgufOutType::kQ8_0, "Q8_0", 7, GgmlType::kQ8_0},
    {GgufOutType::kQ4_0, "Q4_0", 2, GgmlType::kQ4_0},
    {GgufOutType::kQ4_1, "Q4_1", 3, GgmlType::kQ4_1},
    {GgufOutType::kQ4_K_M, "Q4_K_M", 15, GgmlType::kQ4_K},
};

const OutTypeInfo& info(GgufOutType type) {
  for (const auto& i : kOutTypes) {
    if (i.type == type) return i;
  }
  throw_error(ErrorKind::kInternal, "unknown GgufOutType");
}

bool has_suffix(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool fits(GgmlType type, int64_t ne0) {
  return ne0 % ggml_type_traits(type).block_elems == 0;
}

// llama-quant.cpp's use_more_bits: the first and last eighth of the layers and every third one
// in between.
bool use_more_bits(int64_t i, int64_t n) {
  return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

// tensor_type_fallback: a type whose block does not divide ne0.
GgmlType fallback(GgmlType type, int64_t ne0) {
  if (fits(type, ne0)) return type;
  if (type == GgmlType::kQ4_K) type = GgmlType::kQ5_0;
  if (type == GgmlType::kQ6_K) type = GgmlType::kQ8_0;
  return fits(type, ne0) ? type : GgmlType::kF16;
}

}  // namespace

GgufOutType parse_gguf_outtype(const std::string& name) {
  std::string upper = name;
  std::transform(upper.begin(), upper.end(), upper.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  std::string names;
  for (const auto& i : kOutTypes) {
    if (upper == i.name) return i.type;
    names += std::string(names.empty() ? "" : ", ") + i.name;
  }
  throw_error(ErrorKind::kConfig, "unknown GGUF output type '" + name + "' (one of " + names + ")",
              {.field = "outtype"});
}

std::string gguf_outtype_name(GgufOutType type) {
  return info(type).name;
}

uint32_t gguf_file_type(GgufOutType type) {
  return info(type).file_type;
}

GgmlType gguf_tensor_type(GgufOutType outtype, const GgufMixTensor& t) {
  if (t.n_dims < 2) return GgmlType::kF32;
  const GgmlType base = info(outtype).base;
  if (!ggml_type_traits(base).quantized) return base;

  GgmlType type = base;
  const bool output = t.name == "output.weight" || (t.tied && t.name == "token_embd.weight");
  if (output) {
    if (!fits(base, t.ne0)) {
      type = GgmlType::kQ8_0;
    } else if (base != GgmlType::kQ8_0) {
      type = GgmlType::kQ6_K;
    }
  } else if (outtype == GgufOutType::kQ4_K_M && t.layer >= 0 &&
             (has_suffix(t.name, ".attn_v.weight") || has_suffix(t.name, ".ffn_down.weight")) &&
             use_more_bits(t.layer, t.n_layers)) {
    type = GgmlType::kQ6_K;
  }
  return fallback(type, t.ne0);
}

}  // namespace qtrain

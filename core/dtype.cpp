#include "core/dtype.h"

#include "core/error.h"

#include <map>

namespace qtrain {

at::ScalarType scalar_type_from_safetensors(const std::string& dtype) {
  static const std::map<std::string, at::ScalarType> kTypes = {
      {"BOOL", at::kBool},
      {"U8", at::kByte},
      {"I8", at::kChar},
      {"I16", at::kShort},
      {"U16", at::kUInt16},
      {"F16", at::kHalf},
      {"BF16", at::kBFloat16},
      {"I32", at::kInt},
      {"U32", at::kUInt32},
      {"F32", at::kFloat},
      {"F64", at::kDouble},
      {"I64", at::kLong},
      {"U64", at::kUInt64},
      {"C64", at::kComplexFloat},
      {"F8_E5M2", at::kFloat8_e5m2},
      {"F8_E4M3", at::kFloat8_e4m3fn},
      {"F8_E4M3FNUZ", at::kFloat8_e4m3fnuz},
      {"F8_E5M2FNUZ", at::kFloat8_e5m2fnuz},
  };
  auto it = kTypes.find(dtype);
  if (it != kTypes.end()) return it->second;
  if (dtype == "F8_E8M0" || dtype == "F4" || dtype == "F6_E2M3" || dtype == "F6_E3M2") {
    throw_error(ErrorKind::kUnsupported, "safetensors dtype " + dtype + " is not supported");
  }
  throw_error(ErrorKind::kFormat, "unknown safetensors dtype '" + dtype + "'");
}

std::string safetensors_dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kBool:
      return "BOOL";
    case at::kByte:
      return "U8";
    case at::kChar:
      return "I8";
    case at::kShort:
      return "I16";
    case at::kUInt16:
      return "U16";
    case at::kHalf:
      return "F16";
    case at::kBFloat16:
      return "BF16";
    case at::kInt:
      return "I32";
    case at::kUInt32:
      return "U32";
    case at::kFloat:
      return "F32";
    case at::kDouble:
      return "F64";
    case at::kLong:
      return "I64";
    case at::kUInt64:
      return "U64";
    case at::kComplexFloat:
      return "C64";
    case at::kFloat8_e5m2:
      return "F8_E5M2";
    case at::kFloat8_e4m3fn:
      return "F8_E4M3";
    case at::kFloat8_e4m3fnuz:
      return "F8_E4M3FNUZ";
    case at::kFloat8_e5m2fnuz:
      return "F8_E5M2FNUZ";
    default:
      throw_error(ErrorKind::kUnsupported,
                  std::string("no safetensors dtype for ") + c10::toString(type));
  }
}

size_t element_size(at::ScalarType type) {
  return c10::elementSize(type);
}

at::ScalarType scalar_type_from_name(const std::string& name) {
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "half") return at::kHalf;
  if (name == "float32" || name == "fp32" || name == "float") return at::kFloat;
  if (name == "float64" || name == "double") return at::kDouble;
  throw_error(ErrorKind::kConfig,
              "unknown dtype '" + name + "' (expected bfloat16, float16 or float32)");
}

std::string scalar_type_name(at::ScalarType type) {
  switch (type) {
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    default:
      return c10::toString(type);
  }
}

}  // namespace qtrain

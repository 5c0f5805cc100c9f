// Mapping between safetensors dtype strings, HF config dtype names and ATen scalar types.
#pragma once

#include <ATen/core/ScalarType.h>

#include <cstddef>
#include <string>

namespace qtrain {

// "BF16" -> at::kBFloat16 ... Throws Error(kFormat) for a string safetensors does not define and
// Error(kUnsupported) for one it defines that LibTorch cannot hold (F8_E8M0, F4, F6_*).
at::ScalarType scalar_type_from_safetensors(const std::string& dtype);
std::string safetensors_dtype_name(at::ScalarType type);

// Bytes per element.
size_t element_size(at::ScalarType type);

// HF config spelling: "bfloat16"/"bf16", "float16"/"fp16"/"half", "float32"/"fp32"/"float".
at::ScalarType scalar_type_from_name(const std::string& name);
std::string scalar_type_name(at::ScalarType type);  // "bfloat16", "float16", "float32", ...

}  // namespace qtrain

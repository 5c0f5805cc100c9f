// bitsandbytes' serialized 4-bit format (reference/formats.md §1.4): the state-dict entries of one
// quantized Linear, and the `quantization_config` block of a pre-quantized model's config.json.
//
// For a Linear with module name P (e.g. "model.layers.0.self_attn.q_proj"):
//   P.weight                                  U8  [(n+1)/2, 1]  packed codes
//   P.weight.absmax                           F32 [nblocks], or U8 [nblocks] when nested
//   P.weight.quant_map                        F32 [16]
//   P.weight.nested_absmax                    F32 [ceil(nblocks / nested_blocksize)]  (nested)
//   P.weight.nested_quant_map                 F32 [256]                               (nested)
//   P.weight.quant_state.bitsandbytes__nf4    U8  [len]  json.dumps of
//     {"quant_type", "blocksize", "dtype", "shape"[, "nested_blocksize", "nested_dtype",
//      "nested_offset"]}
// P.bias, if any, is an ordinary tensor and not handled here.
#pragma once

#include "formats/safetensors/safetensors.h"
#include "quant/quantized_tensor.h"

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <nlohmann/json_fwd.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

// The entries of a 4-bit QuantizedTensor (nf4/fp4) under module name `module`, in the order
// bitsandbytes' Linear4bit puts them in its state dict. The tensors are CPU and contiguous.
// Throws Error(kUnsupported) for int8.
NamedTensors to_bnb_entries(const std::string& module, const QuantizedTensor& weight);

// The JSON text of `<module>.weight.quant_state.bitsandbytes__<type>`, byte for byte what
// bitsandbytes writes (Python's json.dumps, nested_offset spelled like Python's repr).
std::string bnb_quant_state_json(const QuantizedTensor& weight);

// Looks up a state-dict entry by its full name; returns an undefined tensor when absent.
using TensorLookup = std::function<at::Tensor(const std::string& name)>;

// Rebuilds the QuantizedTensor of module `module` from its bnb entries (CPU tensors; they are
// used as they are, not copied). Checks every entry's presence, dtype and shape against the
// quant_state JSON and the quant_map against the codebook of its type. Throws Error(kFormat)
// naming `source` (a file) and the offending tensor or JSON field.
QuantizedTensor from_bnb_entries(const std::string& module, const TensorLookup& lookup,
                                 const std::string& source = "");
QuantizedTensor from_bnb_entries(const std::string& module, const NamedTensors& entries,
                                 const std::string& source = "");

// If `name` is a `<module>.weight.quant_state.bitsandbytes__{nf4,fp4}` entry: that module.
std::optional<std::string> bnb_quant_state_module(const std::string& name);

// True for the quantization-state entries that accompany a 4-bit `<module>.weight`
// (`.weight.absmax`, `.weight.quant_map`, `.weight.nested_*`, `.weight.quant_state.*`).
bool is_bnb_state_entry(const std::string& name);

// Python's repr() of a double (what json.dumps writes for a float): the shortest digits that
// round-trip, "1.0", "0.0001", "1e-05", "1e+16", "-2.5".
std::string python_float_repr(double value);

// config.json "quantization_config" of a bitsandbytes 4-bit model.
struct BnbQuantizationConfig {
  QuantType type = QuantType::kNF4;           // bnb_4bit_quant_type
  bool double_quant = false;                  // bnb_4bit_use_double_quant
  at::ScalarType compute_dtype = at::kFloat;  // bnb_4bit_compute_dtype
  // llm_int8_skip_modules. Null means transformers' default (the output embeddings, lm_head);
  // a list replaces that default.
  std::optional<std::vector<std::string>> skip_modules;

  // The QuantConfig to quantize with: transformers always uses blocksize 64.
  QuantConfig quant_config() const;
};

// BitsAndBytesConfig(load_in_4bit=True, ...).to_dict() for `quant` (nf4/fp4; its blocksize is
// not part of the config: each weight's quant_state carries its own). `skip_modules` nullopt
// writes null. Throws Error(kUnsupported) for int8.
nlohmann::json bnb_quantization_config_json(
    const QuantConfig& quant, at::ScalarType compute_dtype,
    const std::optional<std::vector<std::string>>& skip_modules = std::nullopt);

// Reads a quantization_config object. Throws Error(kConfig) naming `source` and the field for a
// missing or ill-typed field or an unknown value, and Error(kUnsupported) for 8-bit models or a
// quant storage other than uint8.
BnbQuantizationConfig parse_bnb_quantization_config(const nlohmann::json& config,
                                                    const std::string& source = "config.json");

}  // namespace qtrain

#include "formats/bnb/quant_state.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/json_file.h"
#include "core/shape_string.h"
#include "quant/codebooks.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <charconv>
#include <cmath>
#include <map>
#include <set>

namespace qtrain {
namespace {

using nlohmann::json;

const char* const kQuantStatePrefix = ".weight.quant_state.bitsandbytes__";
// No real weight comes near 2^48 elements (128 TiB of packed 4-bit data).
constexpr int64_t kMaxElements = int64_t{1} << 48;

bool is_4bit(QuantType type) {
  return type == QuantType::kNF4 || type == QuantType::kFP4;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

at::Tensor codebook(QuantType type) {
  return type == QuantType::kNF4 ? nf4_code() : fp4_code();
}

// bitsandbytes spells dtypes as str(torch.dtype).strip("torch.").
std::string bnb_dtype_name(at::ScalarType type) {
  if (type != at::kBFloat16 && type != at::kHalf && type != at::kFloat) {
    throw_error(ErrorKind::kUnsupported,
                std::string("bitsandbytes 4-bit weights are bfloat16, float16 or float32, not ") +
                    c10::toString(type));
  }
  return scalar_type_name(type);
}

at::Tensor host(const at::Tensor& t) {
  return t.to(at::kCPU).contiguous();
}

// Reads and checks the entries of one module; each check names the entry it is about.
class EntryReader {
 public:
  EntryReader(std::string module, const TensorLookup& lookup, std::string source)
      : module_(std::move(module)), lookup_(lookup), source_(std::move(source)) {}

  std::string name(const std::string& suffix) const { return module_ + ".weight" + suffix; }

  [[noreturn]] void fail(const std::string& suffix, const std::string& message,
                         const std::string& field = "") const {
    throw_error(ErrorKind::kFormat, message,
                {.file = source_, .tensor = name(suffix), .field = field});
  }

  at::Tensor find(const std::string& suffix) const { return lookup_(name(suffix)); }

  at::Tensor require(const std::string& suffix, at::ScalarType dtype,
                     const std::vector<int64_t>& shape) const {
    at::Tensor t = find(suffix);
    if (!t.defined()) fail(suffix, "missing bitsandbytes 4-bit entry");
    check(suffix, t, dtype, shape);
    return t;
  }

  void check(const std::string& suffix, const at::Tensor& t, at::ScalarType dtype,
             const std::vector<int64_t>& shape) const {
    if (t.scalar_type() != dtype) {
      fail(suffix, std::string("expected dtype ") + c10::toString(dtype) + ", found " +
                       c10::toString(t.scalar_type()));
    }
    if (t.sizes().vec() != shape) {
      fail(suffix, "expected shape " + shape_string(shape) + ", found " + shape_string(t.sizes()));
    }
  }

 private:
  std::string module_;
  const TensorLookup& lookup_;
  std::string source_;
};

// The quant_state JSON object, checked for its keys and their types.
struct QuantState {
  QuantType type = QuantType::kNF4;
  int64_t blocksize = 0;
  at::ScalarType dtype = at::kBFloat16;
  std::vector<int64_t> shape;
  bool nested = false;
  int64_t nested_blocksize = 0;
  float nested_offset = 0;
};

QuantState parse_quant_state(const EntryReader& entries, const std::string& suffix,
                             const at::Tensor& bytes, QuantType suffix_type) {
  if (bytes.scalar_type() != at::kByte || bytes.dim() != 1) {
    entries.fail(suffix, "expected a 1-D uint8 tensor of JSON bytes, found " +
                             std::string(c10::toString(bytes.scalar_type())) + " " +
                             shape_string(bytes.sizes()));
  }
  const at::Tensor contiguous = host(bytes);
  const std::string text(reinterpret_cast<const char*>(contiguous.data_ptr<uint8_t>()),
                         static_cast<size_t>(contiguous.numel()));
  json object;
  try {
    object = parse_json_text(text, "");
  } catch (const json::exception& e) {
    entries.fail(suffix, std::string("quant_state is not valid JSON: ") + e.what());
  } catch (const Error& e) {  // nested too deep, or a key given twice
    entries.fail(suffix, e.message(), e.context().field);
  }
  if (!object.is_object()) entries.fail(suffix, "quant_state JSON is not an object");

  static const std::set<std::string> kKnown = {"quant_type",   "blocksize",        "dtype",
                                               "shape",        "nested_blocksize", "nested_dtype",
                                               "nested_offset"};
  for (const auto& item : object.items()) {
    if (!kKnown.count(item.key())) entries.fail(suffix, "unknown quant_state key", item.key());
  }
  auto get = [&](const char* key) -> const json& {
    if (!object.contains(key)) entries.fail(suffix, "missing from quant_state", key);
    return object[key];
  };
  auto get_int = [&](const char* key, int64_t lo) {
    const json& v = get(key);
    if (!v.is_number_integer() || v.get<int64_t>() < lo) {
      entries.fail(suffix, "expected an integer >= " + std::to_string(lo) + ", found " + v.dump(),
                   key);
    }
    return v.get<int64_t>();
  };
  auto get_string = [&](const char* key) {
    const json& v = get(key);
    if (!v.is_string()) entries.fail(suffix, "expected a string, found " + v.dump(), key);
    return v.get<std::string>();
  };

  QuantState state;
  const std::string type_name = get_string("quant_type");
  if (type_name != "nf4" && type_name != "fp4") {
    entries.fail(suffix, "expected \"nf4\" or \"fp4\", found \"" + type_name + "\"", "quant_type");
  }
  state.type = quant_type_from_name(type_name);
  if (state.type != suffix_type) {
    entries.fail(suffix, "quant_type \"" + type_name + "\" disagrees with the entry's name",
                 "quant_type");
  }
  state.blocksize = get_int("blocksize", 1);
  try {
    QuantConfig{state.type, state.blocksize, false}.validate();
  } catch (const Error& e) {
    entries.fail(suffix, e.message(), "blocksize");
  }
  const std::string dtype = get_string("dtype");
  if (dtype == "bfloat16") {
    state.dtype = at::kBFloat16;
  } else if (dtype == "float16") {
    state.dtype = at::kHalf;
  } else if (dtype == "float32") {
    state.dtype = at::kFloat;
  } else {
    entries.fail(suffix, "expected bfloat16, float16 or float32, found \"" + dtype + "\"", "dtype");
  }
  const json& shape = get("shape");
  if (!shape.is_array()) entries.fail(suffix, "expected a list, found " + shape.dump(), "shape");
  for (const json& d : shape) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0) {
      entries.fail(suffix, "expected non-negative integers, found " + shape.dump(), "shape");
    }
    state.shape.push_back(d.get<int64_t>());
  }
  // Bounds the element count so that numel and block arithmetic cannot overflow; a zero dim
  // does not excuse the others (the file's tensors are then checked against this shape).
  int64_t elements = 1;
  for (int64_t d : state.shape) {
    if (d != 0 && (__builtin_mul_overflow(elements, d, &elements) || elements > kMaxElements)) {
      entries.fail(suffix, "shape " + shape.dump() + " has more than 2^48 elements", "shape");
    }
  }

  const int nested_keys = object.contains("nested_blocksize") + object.contains("nested_dtype") +
                          object.contains("nested_offset");
  state.nested = nested_keys > 0;
  if (state.nested) {
    state.nested_blocksize = get_int("nested_blocksize", 1);
    const std::string nested_dtype = get_string("nested_dtype");
    if (nested_dtype != "float32") {
      entries.fail(suffix, "expected \"float32\", found \"" + nested_dtype + "\"", "nested_dtype");
    }
    const json& offset = get("nested_offset");
    if (!offset.is_number()) {
      entries.fail(suffix, "expected a number, found " + offset.dump(), "nested_offset");
    }
    // The value is a float32 written as the shortest double repr: converting back is exact.
    state.nested_offset = static_cast<float>(offset.get<double>());
  }
  return state;
}

// The packed codes, whatever dtype they are stored as (bnb_4bit_quant_storage), as uint8
// [(n+1)/2, 1].
at::Tensor read_packed(const EntryReader& entries, int64_t n) {
  const int64_t bytes = (n + 1) / 2;
  at::Tensor t = entries.find("");
  if (!t.defined()) entries.fail("", "missing the packed 4-bit weight");
  if (t.scalar_type() == at::kByte) {
    if (t.sizes().vec() != std::vector<int64_t>{bytes, 1} &&
        t.sizes().vec() != std::vector<int64_t>{bytes}) {
      entries.fail("", "expected shape " + shape_string({bytes, 1}) + " for " + std::to_string(n) +
                           " packed 4-bit values, found " + shape_string(t.sizes()));
    }
    return t.view({bytes, 1});
  }
  if (t.numel() * t.element_size() != bytes || t.dim() != 2 || t.size(1) != 1) {
    entries.fail("", std::string("expected uint8 ") + shape_string({bytes, 1}) +
                         " (or the same bytes in another quant_storage dtype as [k, 1]), found " +
                         c10::toString(t.scalar_type()) + " " + shape_string(t.sizes()));
  }
  return t.contiguous().view(-1).view(at::kByte).view({bytes, 1});
}

const json& require_field(const json& config, const char* key, const std::string& source) {
  if (!config.contains(key)) {
    throw_error(ErrorKind::kConfig, "missing from quantization_config",
                {.file = source, .field = std::string("quantization_config.") + key});
  }
  return config[key];
}

[[noreturn]] void bad_field(const std::string& source, const char* key, const std::string& what) {
  throw_error(ErrorKind::kConfig, what,
              {.file = source, .field = std::string("quantization_config.") + key});
}

bool optional_bool(const json& config, const char* key, bool fallback, const std::string& source) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  if (!config[key].is_boolean()) {
    bad_field(source, key, "expected true or false, found " + config[key].dump());
  }
  return config[key].get<bool>();
}

}  // namespace

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "NaN";  // json.dumps spellings
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  // Shortest round-trip digits, as Python's repr: d.ddddde[+-]XX.
  const auto result = std::to_chars(buf, buf + sizeof(buf), value, std::chars_format::scientific);
  std::string sci(buf, result.ptr);
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  const int exponent = std::stoi(sci.substr(e + 1));
  std::string digits = sci.substr(0, e);
  if (digits.size() > 1) digits.erase(1, 1);  // drop the '.'
  const int ndigits = static_cast<int>(digits.size());

  // repr switches to exponent notation below 1e-4 and from 1e16 on.
  if (exponent < -4 || exponent >= 16) {
    std::string mantissa = digits.substr(0, 1);
    if (ndigits > 1) mantissa += "." + digits.substr(1);
    const int magnitude = std::abs(exponent);
    return sign + mantissa + "e" + (exponent < 0 ? "-" : "+") + (magnitude < 10 ? "0" : "") +
           std::to_string(magnitude);
  }
  const int point = exponent + 1;  // digits before the decimal point
  if (point <= 0) return sign + "0." + std::string(-point, '0') + digits;
  if (point >= ndigits) return sign + digits + std::string(point - ndigits, '0') + ".0";
  return sign + digits.substr(0, point) + "." + digits.substr(point);
}

std::string bnb_quant_state_json(const QuantizedTensor& weight) {
  if (!is_4bit(weight.type)) {
    throw_error(ErrorKind::kUnsupported,
                "only nf4 and fp4 weights have a bitsandbytes 4-bit format, not " +
                    quant_type_name(weight.type));
  }
  // Key order and separators of json.dumps on QuantState.as_dict's non-tensor items.
  std::string out = "{\"quant_type\": \"" + quant_type_name(weight.type) +
                    "\", \"blocksize\": " + std::to_string(weight.blocksize) + ", \"dtype\": \"" +
                    bnb_dtype_name(weight.dtype) + "\", \"shape\": " + shape_string(weight.shape);
  if (weight.nested) {
    out += ", \"nested_blocksize\": " + std::to_string(weight.nested->blocksize) +
           ", \"nested_dtype\": \"float32\", \"nested_offset\": " +
           python_float_repr(static_cast<double>(weight.nested->offset));
  }
  return out + "}";
}

NamedTensors to_bnb_entries(const std::string& module, const QuantizedTensor& weight) {
  const std::string json_text = bnb_quant_state_json(weight);
  const int64_t n = weight.numel();
  if (!weight.data.defined() || weight.data.scalar_type() != at::kByte ||
      weight.data.numel() != (n + 1) / 2) {
    throw_error(ErrorKind::kInternal, "packed 4-bit data does not match the weight's shape",
                {.tensor = module + ".weight"});
  }
  const std::string w = module + ".weight";
  NamedTensors out;
  out.emplace_back(w, host(weight.data).view({(n + 1) / 2, 1}));
  if (weight.nested) {
    out.emplace_back(w + ".absmax", host(weight.nested->codes));
  } else {
    out.emplace_back(w + ".absmax", host(weight.absmax));
  }
  out.emplace_back(w + ".quant_map", host(weight.code));
  if (weight.nested) {
    out.emplace_back(w + ".nested_absmax", host(weight.nested->absmax));
    out.emplace_back(w + ".nested_quant_map", host(weight.nested->code));
  }
  at::Tensor bytes = at::empty({static_cast<int64_t>(json_text.size())}, at::kByte);
  std::copy(json_text.begin(), json_text.end(), bytes.data_ptr<uint8_t>());
  out.emplace_back(w + ".quant_state.bitsandbytes__" + quant_type_name(weight.type), bytes);
  return out;
}

QuantizedTensor from_bnb_entries(const std::string& module, const TensorLookup& lookup,
                                 const std::string& source) {
  const EntryReader entries(module, lookup, source);
  const std::string nf4_suffix = ".quant_state.bitsandbytes__nf4";
  const std::string fp4_suffix = ".quant_state.bitsandbytes__fp4";
  const at::Tensor nf4_state = entries.find(nf4_suffix);
  const at::Tensor fp4_state = entries.find(fp4_suffix);
  if (nf4_state.defined() && fp4_state.defined()) {
    entries.fail(fp4_suffix, "both an nf4 and an fp4 quant_state entry are present");
  }
  if (!nf4_state.defined() && !fp4_state.defined()) {
    entries.fail(nf4_suffix, "missing bitsandbytes 4-bit entry (or its __fp4 twin)");
  }
  const bool is_nf4 = nf4_state.defined();
  const std::string state_suffix = is_nf4 ? nf4_suffix : fp4_suffix;
  const QuantState state = parse_quant_state(entries, state_suffix, is_nf4 ? nf4_state : fp4_state,
                                             is_nf4 ? QuantType::kNF4 : QuantType::kFP4);

  QuantizedTensor q;
  q.type = state.type;
  q.shape = state.shape;
  q.dtype = state.dtype;
  q.blocksize = state.blocksize;
  const int64_t n = q.numel();
  const int64_t nblocks = q.num_blocks();
  q.data = read_packed(entries, n);

  q.code = entries.require(".quant_map", at::kFloat, {16});
  if (!at::equal(q.code, codebook(q.type))) {
    entries.fail(".quant_map", "differs from the " + quant_type_name(q.type) +
                                   " codebook (bitsandbytes dequantizes with its built-in one)");
  }

  const at::Tensor nested_absmax = entries.find(".nested_absmax");
  const at::Tensor nested_map = entries.find(".nested_quant_map");
  if (!state.nested) {
    for (const char* suffix : {".nested_absmax", ".nested_quant_map"}) {
      if (entries.find(suffix).defined()) {
        entries.fail(suffix, "present, but the quant_state has no nested_* fields");
      }
    }
    q.absmax = entries.require(".absmax", at::kFloat, {nblocks});
    return q;
  }
  NestedAbsmax nested;
  nested.blocksize = state.nested_blocksize;
  nested.offset = state.nested_offset;
  nested.codes = entries.require(".absmax", at::kByte, {nblocks});
  nested.absmax = entries.require(".nested_absmax", at::kFloat,
                                  {(nblocks + nested.blocksize - 1) / nested.blocksize});
  nested.code = entries.require(".nested_quant_map", at::kFloat, {256});
  q.nested = std::move(nested);
  return q;
}

QuantizedTensor from_bnb_entries(const std::string& module, const NamedTensors& entries,
                                 const std::string& source) {
  std::map<std::string, at::Tensor> by_name(entries.begin(), entries.end());
  return from_bnb_entries(
      module,
      [&](const std::string& name) {
        auto it = by_name.find(name);
        return it == by_name.end() ? at::Tensor() : it->second;
      },
      source);
}

std::optional<std::string> bnb_quant_state_module(const std::string& name) {
  const size_t pos = name.rfind(kQuantStatePrefix);
  if (pos == std::string::npos || pos == 0) return std::nullopt;
  const std::string type = name.substr(pos + std::char_traits<char>::length(kQuantStatePrefix));
  if (type != "nf4" && type != "fp4") return std::nullopt;
  return name.substr(0, pos);
}

bool is_bnb_state_entry(const std::string& name) {
  for (const char* suffix : {".weight.absmax", ".weight.quant_map", ".weight.nested_absmax",
                             ".weight.nested_quant_map"}) {
    if (ends_with(name, suffix)) return true;
  }
  return name.find(".weight.quant_state.") != std::string::npos;
}

QuantConfig BnbQuantizationConfig::quant_config() const {
  return QuantConfig{type, 64, double_quant};
}

nlohmann::json bnb_quantization_config_json(
    const QuantConfig& quant, at::ScalarType compute_dtype,
    const std::optional<std::vector<std::string>>& skip_modules) {
  quant.validate();
  if (!is_4bit(quant.type)) {
    throw_error(ErrorKind::kUnsupported,
                "a bitsandbytes 4-bit config needs nf4 or fp4, not " + quant_type_name(quant.type));
  }
  json out = json::object();
  out["quant_method"] = "bitsandbytes";
  out["_load_in_4bit"] = true;
  out["_load_in_8bit"] = false;
  out["load_in_4bit"] = true;
  out["load_in_8bit"] = false;
  out["bnb_4bit_quant_type"] = quant_type_name(quant.type);
  out["bnb_4bit_use_double_quant"] = quant.double_quant;
  out["bnb_4bit_compute_dtype"] = bnb_dtype_name(compute_dtype);
  out["bnb_4bit_quant_storage"] = "uint8";
  out["llm_int8_threshold"] = 6.0;
  out["llm_int8_skip_modules"] = skip_modules ? json(*skip_modules) : json(nullptr);
  out["llm_int8_enable_fp32_cpu_offload"] = false;
  out["llm_int8_has_fp16_weight"] = false;
  return out;
}

BnbQuantizationConfig parse_bnb_quantization_config(const nlohmann::json& config,
                                                    const std::string& source) {
  if (!config.is_object()) {
    throw_error(ErrorKind::kConfig, "expected an object, found " + config.dump(),
                {.file = source, .field = "quantization_config"});
  }
  const json& method = require_field(config, "quant_method", source);
  if (method != "bitsandbytes") {
    bad_field(source, "quant_method", "expected \"bitsandbytes\", found " + method.dump());
  }
  const bool load_8bit = optional_bool(config, "load_in_8bit", false, source) ||
                         optional_bool(config, "_load_in_8bit", false, source);
  if (load_8bit) {
    throw_error(ErrorKind::kUnsupported, "8-bit (LLM.int8) checkpoints are not supported",
                {.file = source, .field = "quantization_config.load_in_8bit"});
  }
  const bool load_4bit = optional_bool(config, "load_in_4bit", false, source) ||
                         optional_bool(config, "_load_in_4bit", false, source);
  if (!load_4bit) bad_field(source, "load_in_4bit", "is not true: not a 4-bit checkpoint");

  BnbQuantizationConfig out;
  // BitsAndBytesConfig's own defaults apply to absent fields (quant type fp4, no double quant).
  out.type = QuantType::kFP4;
  if (config.contains("bnb_4bit_quant_type") && !config["bnb_4bit_quant_type"].is_null()) {
    const json& type = config["bnb_4bit_quant_type"];
    if (type != "nf4" && type != "fp4") {
      bad_field(source, "bnb_4bit_quant_type", "expected \"nf4\" or \"fp4\", found " + type.dump());
    }
    out.type = quant_type_from_name(type.get<std::string>());
  }
  out.double_quant = optional_bool(config, "bnb_4bit_use_double_quant", false, source);
  if (config.contains("bnb_4bit_compute_dtype") && !config["bnb_4bit_compute_dtype"].is_null()) {
    const json& dtype = config["bnb_4bit_compute_dtype"];
    static const std::map<std::string, at::ScalarType> kDtypes = {{"bfloat16", at::kBFloat16},
                                                                  {"float16", at::kHalf},
                                                                  {"half", at::kHalf},
                                                                  {"float32", at::kFloat},
                                                                  {"float", at::kFloat}};
    if (!dtype.is_string() || !kDtypes.count(dtype.get<std::string>())) {
      bad_field(source, "bnb_4bit_compute_dtype",
                "expected \"bfloat16\", \"float16\" or \"float32\", found " + dtype.dump());
    }
    out.compute_dtype = kDtypes.at(dtype.get<std::string>());
  }
  if (config.contains("bnb_4bit_quant_storage") && !config["bnb_4bit_quant_storage"].is_null()) {
    const json& storage = config["bnb_4bit_quant_storage"];
    static const std::set<std::string> kStorage = {"uint8",   "int8",    "bfloat16",
                                                   "float16", "float32", "int32"};
    // Any storage dtype holds the same packed bytes; from_bnb_entries reinterprets them.
    if (!storage.is_string() || !kStorage.count(storage.get<std::string>())) {
      bad_field(source, "bnb_4bit_quant_storage", "unknown storage dtype " + storage.dump());
    }
  }
  if (config.contains("llm_int8_skip_modules") && !config["llm_int8_skip_modules"].is_null()) {
    const json& skip = config["llm_int8_skip_modules"];
    if (!skip.is_array()) {
      bad_field(source, "llm_int8_skip_modules", "expected a list or null, found " + skip.dump());
    }
    out.skip_modules.emplace();
    for (const json& module : skip) {
      if (!module.is_string()) {
        bad_field(source, "llm_int8_skip_modules",
                  "expected module names (strings), found " + module.dump());
      }
      out.skip_modules->push_back(module.get<std::string>());
    }
  }
  return out;
}

}  // namespace qtrain

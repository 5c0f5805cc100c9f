// The bitsandbytes 4-bit serialization without Python: Python-repr float spelling, the
// quant_state JSON bytes, config.json's quantization_config, and errors that name the tensor,
// the JSON field or the config field.
#include "core/error.h"
#include "formats/bnb/quant_state.h"
#include "quant/codebooks.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>

namespace qtrain {
namespace {

using nlohmann::json;

const std::string kModule = "model.layers.0.self_attn.q_proj";

Error error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return Error(ErrorKind::kInternal, "no error");
}

TEST(PythonFloatReprTest, MatchesPythonSpellings) {
  // Expected strings are Python 3.11's repr() of the same doubles.
  EXPECT_EQ(python_float_repr(0.0), "0.0");
  EXPECT_EQ(python_float_repr(-0.0), "-0.0");
  EXPECT_EQ(python_float_repr(1.0), "1.0");
  EXPECT_EQ(python_float_repr(-2.5), "-2.5");
  EXPECT_EQ(python_float_repr(6.0), "6.0");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(python_float_repr(0.00001), "1e-05");
  EXPECT_EQ(python_float_repr(1.5e-7), "1.5e-07");
  EXPECT_EQ(python_float_repr(1e16), "1e+16");
  EXPECT_EQ(python_float_repr(1e15), "1000000000000000.0");
  EXPECT_EQ(python_float_repr(123456789.0), "123456789.0");
  EXPECT_EQ(python_float_repr(1.2345e100), "1.2345e+100");
  // float32 values widened to double, as bitsandbytes' offset.item() gives them.
  EXPECT_EQ(python_float_repr(static_cast<double>(0.1f)), "0.10000000149011612");
  EXPECT_EQ(python_float_repr(static_cast<double>(1e-5f)), "9.999999747378752e-06");
  EXPECT_EQ(python_float_repr(static_cast<double>(2.5483f)), "2.54830002784729");
  EXPECT_EQ(python_float_repr(static_cast<double>(1e20f)), "1.0000000200408773e+20");
  EXPECT_EQ(python_float_repr(static_cast<double>(0.30517843f)), "0.3051784336566925");
}

TEST(PythonFloatReprTest, RoundTripsEveryFloat32) {
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t b = rng();
    float f;
    std::memcpy(&f, &b, sizeof(f));
    if (!std::isfinite(f)) continue;
    const std::string text = python_float_repr(static_cast<double>(f));
    const float back = static_cast<float>(std::strtod(text.c_str(), nullptr));
    ASSERT_EQ(std::memcmp(&back, &f, sizeof(f)), 0) << text;
  }
}

QuantizedTensor sample(QuantType type, bool nested, at::ScalarType dtype = at::kBFloat16) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
  return quantize(at::randn({48, 40}, gen).to(dtype), {type, 64, nested});
}

TEST(BnbQuantStateJsonTest, SpellingOfJsonDumps) {
  QuantizedTensor q = sample(QuantType::kNF4, true);
  q.shape = {4096, 4096};
  q.nested->offset = 0.0123f;
  EXPECT_EQ(bnb_quant_state_json(q),
            "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": "
            "[4096, 4096], \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", "
            "\"nested_offset\": 0.012299999594688416}");
  const QuantizedTensor p = sample(QuantType::kFP4, false, at::kFloat);
  EXPECT_EQ(bnb_quant_state_json(p),
            "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": "
            "[48, 40]}");
}

TEST(BnbEntriesTest, NamesDtypesAndShapes) {
  const NamedTensors entries = to_bnb_entries(kModule, sample(QuantType::kNF4, true));
  std::vector<std::string> names;
  for (const auto& [name, tensor] : entries) names.push_back(name);
  const std::string w = kModule + ".weight";
  EXPECT_EQ(names, (std::vector<std::string>{w, w + ".absmax", w + ".quant_map",
                                             w + ".nested_absmax", w + ".nested_quant_map",
                                             w + ".quant_state.bitsandbytes__nf4"}));
  EXPECT_EQ(entries[0].second.sizes(), (at::IntArrayRef{960, 1}));
  EXPECT_EQ(entries[0].second.scalar_type(), at::kByte);
  EXPECT_EQ(entries[1].second.scalar_type(), at::kByte);  // nested: 8-bit absmax codes
  EXPECT_EQ(entries[1].second.sizes(), (at::IntArrayRef{30}));
  EXPECT_EQ(entries[3].second.sizes(), (at::IntArrayRef{1}));
  EXPECT_EQ(entries[4].second.sizes(), (at::IntArrayRef{256}));

  const NamedTensors plain = to_bnb_entries(kModule, sample(QuantType::kFP4, false));
  ASSERT_EQ(plain.size(), 4u);
  EXPECT_EQ(plain[1].second.scalar_type(), at::kFloat);
  EXPECT_EQ(plain[3].first, w + ".quant_state.bitsandbytes__fp4");

  EXPECT_EQ(bnb_quant_state_module(w + ".quant_state.bitsandbytes__fp4"), kModule);
  EXPECT_EQ(bnb_quant_state_module(w + ".quant_state.bitsandbytes__int8"), std::nullopt);
  EXPECT_EQ(bnb_quant_state_module(w), std::nullopt);
  EXPECT_TRUE(is_bnb_state_entry(w + ".nested_quant_map"));
  EXPECT_TRUE(is_bnb_state_entry(w + ".quant_state.bitsandbytes__nf4"));
  EXPECT_FALSE(is_bnb_state_entry(w));
  EXPECT_FALSE(is_bnb_state_entry(kModule + ".bias"));

  const QuantizedTensor int8 = quantize(at::ones({8, 64}), {QuantType::kInt8, 64, false});
  EXPECT_EQ(error_of([&] { to_bnb_entries(kModule, int8); }).kind(), ErrorKind::kUnsupported);
}

// The entries of `q` with one of them replaced (an undefined tensor removes it).
NamedTensors edited(const QuantizedTensor& q, const std::string& suffix, const at::Tensor& value) {
  NamedTensors out;
  for (auto& [name, tensor] : to_bnb_entries(kModule, q)) {
    if (name != kModule + ".weight" + suffix) {
      out.emplace_back(name, tensor);
    } else if (value.defined()) {
      out.emplace_back(name, value);
    }
  }
  return out;
}

at::Tensor json_bytes(const std::string& text) {
  at::Tensor t = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
  std::memcpy(t.data_ptr(), text.data(), text.size());
  return t;
}

// The error from_bnb_entries raises for `entries`; expects kFormat naming `tensor_suffix`.
Error format_error(const NamedTensors& entries, const std::string& tensor_suffix) {
  const Error e = error_of([&] { from_bnb_entries(kModule, entries, "model.safetensors"); });
  EXPECT_EQ(e.kind(), ErrorKind::kFormat) << e.what();
  EXPECT_EQ(e.context().file, "model.safetensors");
  EXPECT_EQ(e.context().tensor, kModule + ".weight" + tensor_suffix) << e.what();
  return e;
}

TEST(BnbEntriesTest, MissingOrMisshapedEntriesAreNamed) {
  const QuantizedTensor q = sample(QuantType::kNF4, true);
  const std::string state = ".quant_state.bitsandbytes__nf4";
  for (const char* suffix : {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"}) {
    const Error e = format_error(edited(q, suffix, at::Tensor()), suffix);
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
  format_error(edited(q, state, at::Tensor()), state);
  format_error(edited(q, "", at::zeros({960}, at::kFloat)), "");
  format_error(edited(q, "", at::zeros({959, 1}, at::kByte)), "");
  format_error(edited(q, ".absmax", at::zeros({30}, at::kFloat)), ".absmax");
  format_error(edited(q, ".absmax", at::zeros({31}, at::kByte)), ".absmax");
  format_error(edited(q, ".nested_absmax", at::zeros({2}, at::kFloat)), ".nested_absmax");
  format_error(edited(q, ".nested_quant_map", at::zeros({255}, at::kFloat)), ".nested_quant_map");
  format_error(edited(q, ".quant_map", fp4_code()), ".quant_map");
  format_error(edited(q, state, json_bytes("{\"quant_type\": ").to(at::kFloat)), state);
  // Found by fuzz_bnb_quant_state: a number beyond double escaped as out_of_range (exit 70).
  const Error overflow = format_error(
      edited(q, state, json_bytes("{\"quant_type\": \"nf4\", \"shape\": [48, 4e88416]}")), state);
  EXPECT_NE(std::string(overflow.what()).find("not valid JSON"), std::string::npos)
      << overflow.what();

  // Nested tensors next to a quant_state without nested fields.
  NamedTensors extra = to_bnb_entries(kModule, sample(QuantType::kNF4, false));
  extra.emplace_back(kModule + ".weight.nested_absmax", at::zeros({1}));
  format_error(extra, ".nested_absmax");

  // Both an nf4 and an fp4 quant_state.
  NamedTensors both = to_bnb_entries(kModule, q);
  both.emplace_back(kModule + ".weight.quant_state.bitsandbytes__fp4", json_bytes("{}"));
  format_error(both, ".quant_state.bitsandbytes__fp4");
}

TEST(BnbEntriesTest, BadQuantStateJsonNamesTheField) {
  const QuantizedTensor q = sample(QuantType::kNF4, true);
  const std::string state = ".quant_state.bitsandbytes__nf4";
  json good = json::parse(bnb_quant_state_json(q));
  auto with = [&](const std::string& key, const json& value) {
    json j = good;
    if (value.is_discarded()) {
      j.erase(key);
    } else {
      j[key] = value;
    }
    return edited(q, state, json_bytes(j.dump()));
  };
  const json removed = json::value_t::discarded;
  struct Case {
    std::string key;
    json value;
  };
  const std::vector<Case> cases = {
      {"quant_type", "fp4"},
      {"quant_type", "int8"},
      {"quant_type", removed},
      {"blocksize", 48},
      {"blocksize", "64"},
      {"blocksize", removed},
      {"dtype", "float64"},
      {"dtype", 16},
      {"shape", "48x40"},
      {"shape", json::array({48, -40})},
      // Found by CI's fuzz_bnb_quant_state: numel() overflowed int64 (UBSan).
      {"shape", json::array({int64_t{911111111111111116}, 4040})},
      {"shape", json::array({0, int64_t{1} << 40, int64_t{1} << 40})},
      {"nested_dtype", "float16"},
      {"nested_offset", "0.1"},
      {"nested_offset", removed},
      {"nested_blocksize", 0},
      {"surprise", 1},
  };
  for (const Case& c : cases) {
    const Error e = format_error(with(c.key, c.value), state);
    EXPECT_EQ(e.context().field, c.key) << c.key << " = " << c.value.dump() << ": " << e.what();
  }
  // A shape that disagrees with the tensors is reported on the tensor that does not fit, also at
  // the 2^48-element limit.
  format_error(with("shape", json::array({48, 41})), "");
  format_error(with("shape", json::array({int64_t{1} << 24, int64_t{1} << 24})), "");
  format_error(edited(q, state, json_bytes("{not json")), state);
  format_error(edited(q, state, json_bytes("[1, 2]")), state);
}

TEST(BnbEntriesTest, ReinterpretsOtherQuantStorage) {
  const QuantizedTensor q = sample(QuantType::kNF4, false);
  // bnb_4bit_quant_storage=bfloat16 stores the same bytes as [(n+1)/4, 1] bfloat16.
  const at::Tensor as_bf16 = q.data.view(-1).view(at::kBFloat16).view({-1, 1});
  const QuantizedTensor back = from_bnb_entries(kModule, edited(q, "", as_bf16));
  EXPECT_TRUE(at::equal(back.data, q.data));
}

TEST(BnbQuantizationConfigTest, MatchesTransformersToDict) {
  // BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
  // bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16).to_dict(), from
  // transformers 5.23.
  const json expected = json::parse(R"({
    "quant_method": "bitsandbytes", "_load_in_8bit": false, "_load_in_4bit": true,
    "llm_int8_threshold": 6.0, "llm_int8_skip_modules": null,
    "llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false,
    "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true,
    "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
    "load_in_4bit": true, "load_in_8bit": false})");
  const json produced = bnb_quantization_config_json({QuantType::kNF4, 64, true}, at::kBFloat16);
  EXPECT_EQ(produced, expected) << produced.dump(2);
  EXPECT_EQ(produced.dump().find("6.0") != std::string::npos, true);

  const BnbQuantizationConfig parsed = parse_bnb_quantization_config(produced);
  EXPECT_EQ(parsed.type, QuantType::kNF4);
  EXPECT_TRUE(parsed.double_quant);
  EXPECT_EQ(parsed.compute_dtype, at::kBFloat16);
  EXPECT_FALSE(parsed.skip_modules.has_value());
  EXPECT_EQ(parsed.quant_config().blocksize, 64);

  const json fp4 = bnb_quantization_config_json({QuantType::kFP4, 128, false}, at::kFloat,
                                                std::vector<std::string>{"lm_head", "down_proj"});
  const BnbQuantizationConfig back = parse_bnb_quantization_config(fp4);
  EXPECT_EQ(back.type, QuantType::kFP4);
  EXPECT_FALSE(back.double_quant);
  EXPECT_EQ(back.compute_dtype, at::kFloat);
  EXPECT_EQ(back.skip_modules, (std::vector<std::string>{"lm_head", "down_proj"}));

  // Minimal configs fall back to BitsAndBytesConfig's defaults.
  const BnbQuantizationConfig minimal = parse_bnb_quantization_config(
      json::parse(R"({"quant_method": "bitsandbytes", "load_in_4bit": true})"));
  EXPECT_EQ(minimal.type, QuantType::kFP4);
  EXPECT_FALSE(minimal.double_quant);
  EXPECT_EQ(minimal.compute_dtype, at::kFloat);
}

TEST(BnbQuantizationConfigTest, ErrorsNameTheField) {
  const json good = bnb_quantization_config_json({QuantType::kNF4, 64, true}, at::kBFloat16);
  struct Case {
    std::string key;
    json value;
    ErrorKind kind;
  };
  const std::vector<Case> cases = {
      {"quant_method", "gptq", ErrorKind::kConfig},
      {"load_in_4bit", false, ErrorKind::kConfig},
      {"load_in_8bit", true, ErrorKind::kUnsupported},
      {"bnb_4bit_quant_type", "int4", ErrorKind::kConfig},
      {"bnb_4bit_use_double_quant", "yes", ErrorKind::kConfig},
      {"bnb_4bit_compute_dtype", "float64", ErrorKind::kConfig},
      {"bnb_4bit_quant_storage", "complex64", ErrorKind::kConfig},
      {"llm_int8_skip_modules", "lm_head", ErrorKind::kConfig},
      {"llm_int8_skip_modules", json::array({1}), ErrorKind::kConfig},
  };
  for (const Case& c : cases) {
    json j = good;
    j[c.key] = c.value;
    if (c.key == "load_in_4bit") j["_load_in_4bit"] = false;
    const Error e = error_of([&] { parse_bnb_quantization_config(j, "dir/config.json"); });
    EXPECT_EQ(e.kind(), c.kind) << c.key << ": " << e.what();
    EXPECT_EQ(e.context().file, "dir/config.json");
    EXPECT_EQ(e.context().field, "quantization_config." + c.key) << e.what();
  }
  json no_method = good;
  no_method.erase("quant_method");
  EXPECT_EQ(error_of([&] { parse_bnb_quantization_config(no_method); }).context().field,
            "quantization_config.quant_method");
  EXPECT_EQ(error_of([&] { parse_bnb_quantization_config(json::array()); }).kind(),
            ErrorKind::kConfig);
  EXPECT_EQ(error_of([&] {
              bnb_quantization_config_json({QuantType::kInt8, 64, false}, at::kFloat);
            }).kind(),
            ErrorKind::kUnsupported);
}

}  // namespace
}  // namespace qtrain

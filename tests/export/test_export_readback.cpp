// Reading exports back (export/export_readback.h, export/ggml_decode.h): the ggml block decoders
// against gguf-py's dequantize on random blocks (bit for bit) and against the encoders' error
// bounds; a GGUF file back to the HF tensors it came from (names, Q/K permutation, tied
// embeddings, gemma2/3's norms and their 1 + w, phi3's fused projections); GPTQ v1 tensors back to
// scale * (code - zero) from the values they were packed from; and the errors of a model built from
// tensors.
#include "core/error.h"
#include "core/text.h"
#include "export/export_readback.h"
#include "export/ggml_decode.h"
#include "export/gguf_export.h"
#include "formats/gguf/gguf_types.h"
#include "formats/gptq/gptq_layout.h"
#include "formats/safetensors/safetensors.h"
#include "models/hf_loader.h"
#include "models/tiny_model.h"
#include "quant/ggml/ggml_fp16.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>

namespace qtrain {
namespace {

using testing::ScratchDir;

// Random blocks of `type` whose fp16 scale fields hold finite values (so no NaN reaches the
// comparison): every code path of the decoder, with arbitrary codes. F32 and F16: normal values.
std::vector<uint8_t> random_blocks(GgmlType type, int64_t rows, int64_t ne0, uint64_t seed) {
  const GgmlTypeTraits& traits = ggml_type_traits(type);
  const int64_t blocks = rows * ne0 / traits.block_elems;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  if (type == GgmlType::kF32 || type == GgmlType::kF16) {
    const at::Tensor values =
        at::randn({rows * ne0}, gen).to(type == GgmlType::kF32 ? at::kFloat : at::kHalf);
    const auto* p = static_cast<const uint8_t*>(values.data_ptr());
    return {p, p + values.nbytes()};
  }
  const at::Tensor bytes =
      at::randint(0, 256, {blocks * traits.block_bytes}, gen, at::TensorOptions().dtype(at::kByte));
  std::vector<uint8_t> out(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel());
  // Byte offsets of each block's fp16 fields.
  std::vector<int64_t> fields = {0};
  if (type == GgmlType::kQ4_1 || type == GgmlType::kQ5_1 || type == GgmlType::kQ4_K) {
    fields = {0, 2};
  } else if (type == GgmlType::kQ6_K) {
    fields = {208};
  }
  const at::Tensor scales = at::randn({blocks, static_cast<int64_t>(fields.size())}, gen) * 0.5;
  for (int64_t b = 0; b < blocks; ++b) {
    for (size_t f = 0; f < fields.size(); ++f) {
      const uint16_t bits = ggml_fp16_bits(scales[b][static_cast<int64_t>(f)].item<float>());
      std::memcpy(out.data() + b * traits.block_bytes + fields[f], &bits, 2);
    }
  }
  return out;
}

void write_raw(const std::string& path, const void* data, size_t n) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

std::vector<float> read_floats(const std::string& path, size_t n) {
  std::vector<float> out(n);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n * sizeof(float)));
  return out;
}

const GgmlType kDecodable[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kQ8_0,
                               GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0,
                               GgmlType::kQ5_1, GgmlType::kQ4_K, GgmlType::kQ6_K};

TEST(GgmlDecode, EqualsGgufPyOnRandomBlocksBitForBit) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir("qtrain-ggml-decode");
  const int64_t rows = 3, ne0 = 512;
  nlohmann::json meta = {{"tensors", nlohmann::json::array()}};
  std::map<std::string, at::Tensor> ours;
  uint64_t seed = 1;
  for (GgmlType type : kDecodable) {
    const std::string name = ggml_type_name(type);
    const std::vector<uint8_t> bytes = random_blocks(type, rows, ne0, seed++);
    write_raw(dir.file(name + ".bin"), bytes.data(), bytes.size());
    meta["tensors"].push_back({{"name", name}, {"type", name}, {"rows", rows}, {"ne0", ne0}});
    ours[name] = ggml_decode_rows(type, bytes.data(), rows, ne0);
  }
  testing::write_file(dir.file("meta.json"), meta.dump());
  std::string output;
  ASSERT_EQ(testing::run_reference_script("ggml_dequantize.py", {dir.path()}, &output), 0)
      << output;
  for (const auto& [name, y] : ours) {
    const std::vector<float> ref = read_floats(dir.file(name + ".ref.f32"), rows * ne0);
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{rows, ne0}));
    ASSERT_TRUE(at::isfinite(y).all().item<bool>()) << name;
    EXPECT_EQ(std::memcmp(y.data_ptr<float>(), ref.data(), ref.size() * sizeof(float)), 0)
        << name << ": max diff " << (y.flatten() - at::tensor(ref)).abs().max().item<double>();
  }
}

// decode(encode(x)) is within each type's worst error relative to its block's largest |x| (the
// bounds read_gguf.py checks), F32 is exact and F16 is x rounded to half.
TEST(GgmlDecode, InvertsTheEncodersWithinTheirBounds) {
  at::manual_seed(5);
  const at::Tensor x =
      at::cat({at::randn({2, 512}), at::randn({1, 512}).pow(3), at::zeros({1, 512})});
  const std::pair<GgmlType, double> bounds[] = {{GgmlType::kQ8_0, 0.5 / 127 + 0.00049},
                                                {GgmlType::kQ4_0, 0.126},
                                                {GgmlType::kQ5_0, 0.063},
                                                {GgmlType::kQ4_K, 0.12},
                                                {GgmlType::kQ6_K, 0.025}};
  for (const auto& [type, bound] : bounds) {
    const GgmlTypeTraits& traits = ggml_type_traits(type);
    std::vector<uint8_t> bytes(ggml_nbytes(type, {x.size(1), x.size(0)}));
    ggml_encode_rows(type, x, bytes.data());
    const at::Tensor y = ggml_decode_rows(type, bytes.data(), x.size(0), x.size(1));
    const at::Tensor err = (y - x).abs().reshape({-1, traits.block_elems}).amax(1);
    const at::Tensor amax = x.abs().reshape({-1, traits.block_elems}).amax(1);
    EXPECT_TRUE((err <= amax * bound).all().item<bool>()) << traits.name;
    EXPECT_EQ(y[3].abs().max().item<float>(), 0.0f) << traits.name;  // zero blocks stay zero
  }
  std::vector<uint8_t> f32(x.numel() * 4), f16(x.numel() * 2);
  ggml_encode_rows(GgmlType::kF32, x, f32.data());
  ggml_encode_rows(GgmlType::kF16, x, f16.data());
  EXPECT_TRUE(at::equal(ggml_decode_rows(GgmlType::kF32, f32.data(), 4, 512), x));
  EXPECT_TRUE(at::equal(ggml_decode_rows(GgmlType::kF16, f16.data(), 4, 512),
                        x.to(at::kHalf).to(at::kFloat)));
}

TEST(GgmlDecode, RefusesUnknownTypesAndPartialBlocks) {
  std::vector<uint8_t> bytes(1024);
  try {
    ggml_decode_rows(GgmlType::kQ2_K, bytes.data(), 1, 256);
    FAIL() << "Q2_K decoded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("Q2_K"), std::string::npos) << e.what();
  }
  try {
    ggml_decode_rows(GgmlType::kQ8_0, bytes.data(), 1, 48);
    FAIL() << "48 values decoded as Q8_0";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kShape);
  }
}

// An F32 GGUF holds the checkpoint's values: reading it back gives every HF tensor exactly, with
// the llama Q/K rows in HF order again, and a tied model without lm_head.
TEST(ExportReadback, F32GgufGivesTheCheckpointBack) {
  ScratchDir dir("qtrain-readback-gguf");
  for (const std::string arch : {"llama", "qwen2"}) {
    const std::string model = dir.file(arch);
    write_tiny_model({.arch = arch, .preset = "micro", .seed = 3}, model);
    const std::string gguf = dir.file(arch + ".gguf");
    export_gguf(model, gguf, {.outtype = GgufOutType::kF32});
    const ModelConfig config = ModelConfig::from_file(model + "/config.json");
    const auto tensors = gguf_hf_tensors(gguf, config);
    const CheckpointReader checkpoint = CheckpointReader::open_dir(model);
    EXPECT_EQ(tensors.size(), checkpoint.names().size()) << arch;
    for (const std::string& name : checkpoint.names()) {
      ASSERT_TRUE(tensors.count(name)) << arch << ": " << name;
      EXPECT_TRUE(at::equal(tensors.at(name), checkpoint.tensor(name).to(at::kFloat)))
          << arch << ": " << name;
    }
    EXPECT_EQ(tensors.count("lm_head.weight"), config.tie_word_embeddings ? 0u : 1u) << arch;
    // The model built from them computes what the checkpoint's does.
    const auto exported = load_export(gguf, ExportFormat::kGguf, model, at::kFloat, c10::kCPU);
    const auto original = load_causal_lm(model, {.dtype = at::kFloat});
    const at::Tensor ids = at::arange(3, 40, at::kLong).unsqueeze(0);
    at::NoGradGuard no_grad;
    EXPECT_TRUE(
        at::equal(exported->forward({.input_ids = ids}), original->forward({.input_ids = ids})))
        << arch;
  }
}

// gemma2/3 and phi3 files (Gemma's post-attention, pre/post-feedforward and q/k norms, its norms
// stored as float32 1 + w; phi3's fused attn_qkv and ffn_up) read back to the checkpoint's own
// tensors. From a bfloat16 checkpoint F32 gives every tensor bit for bit (w of 8 significant bits
// survives 1 + w and back) and F16 the 2-D weights rounded to half; from a float32 checkpoint
// Gemma's norms are w within float32(1 + w)'s rounding. Every tensor holds distinct random values,
// so a norm mapped to the wrong HF name, or left at 1 + w, fails the comparison.
TEST(ExportReadback, GemmaAndPhi3GgufGiveTheCheckpointBack) {
  ScratchDir dir("qtrain-readback-families");
  for (const std::string arch : {"gemma2", "gemma3", "phi3"}) {
    for (const std::string dtype : {"bfloat16", "float32"}) {
      const std::string model = dir.file(arch + "-" + dtype);
      write_tiny_model({.arch = arch, .preset = "micro", .seed = 5, .dtype = dtype}, model);
      const ModelConfig config = ModelConfig::from_file(model + "/config.json");
      const CheckpointReader checkpoint = CheckpointReader::open_dir(model);
      for (const GgufOutType outtype : {GgufOutType::kF32, GgufOutType::kF16}) {
        const bool f16 = outtype == GgufOutType::kF16;
        const std::string what = arch + " " + dtype + (f16 ? " F16" : " F32");
        const std::string gguf = model + (f16 ? "-f16.gguf" : "-f32.gguf");
        export_gguf(model, gguf, {.outtype = outtype});
        const auto tensors = gguf_hf_tensors(gguf, config);
        EXPECT_EQ(tensors.size(), checkpoint.names().size()) << what;
        for (const std::string& name : checkpoint.names()) {
          ASSERT_TRUE(tensors.count(name)) << what << ": " << name;
          const at::Tensor& got = tensors.at(name);
          at::Tensor want = checkpoint.tensor(name).to(at::kFloat);
          if (f16 && want.dim() == 2) want = want.to(at::kHalf).to(at::kFloat);
          if (config.gemma_style() && ends_with(name, "norm.weight") && dtype == "float32") {
            // Half an ulp of 1 + w is at most |1 + w| * 2^-24.
            EXPECT_TRUE(
                at::all((got - want).abs() <= (want + 1).abs() * std::ldexp(1.0, -24)).item<bool>())
                << what << ": " << name << " off by " << (got - want).abs().max().item<float>();
          } else {
            EXPECT_TRUE(at::equal(got, want)) << what << ": " << name;
          }
        }
        if (dtype == "bfloat16" && !f16) {
          const auto exported =
              load_export(gguf, ExportFormat::kGguf, model, at::kFloat, c10::kCPU);
          const auto original = load_causal_lm(model, {.dtype = at::kFloat});
          const at::Tensor ids = at::arange(3, 40, at::kLong).unsqueeze(0);
          at::NoGradGuard no_grad;
          EXPECT_TRUE(at::equal(exported->forward({.input_ids = ids}),
                                original->forward({.input_ids = ids})))
              << what;
        }
      }
    }
  }
}

// The names are the config's family's: a Gemma file read as a llama model names the first tensor
// llama has no name for.
TEST(ExportReadback, AGgufOfAnotherFamilyNamesItsForeignTensor) {
  ScratchDir dir("qtrain-readback-foreign");
  const std::string model = dir.file("gemma2");
  write_tiny_model({.arch = "gemma2", .preset = "micro", .seed = 5}, model);
  const std::string gguf = dir.file("gemma2.gguf");
  export_gguf(model, gguf, {.outtype = GgufOutType::kF32});
  ModelConfig config = ModelConfig::from_file(model + "/config.json");
  config.model_type = "qwen2";
  try {
    gguf_hf_tensors(gguf, config);
    FAIL() << "read a gemma2 file as qwen2";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kShape);
    EXPECT_NE(std::string(e.what()).find("blk.0.post_attention_norm.weight"), std::string::npos)
        << e.what();
  }
}

// GPTQ v1 tensors packed from known codes, zeros and scales read back as scale * (code - zero).
TEST(ExportReadback, GptqTensorsDequantizeToScaleTimesCodeMinusZero) {
  ScratchDir dir("qtrain-readback-gptq");
  const int64_t out = 16, in = 64, group = 32;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(9);
  const at::Tensor codes = at::randint(0, 16, {out, in}, gen, at::TensorOptions().dtype(at::kByte));
  const at::Tensor zeros = at::randint(1, 17, {out, in / group}, gen).to(at::kFloat);
  const at::Tensor scales = at::rand({out, in / group}, gen) * 0.1 + 1e-3;
  const GptqProjection p = pack_gptq_projection(codes, zeros, scales, group);
  const at::Tensor norm = at::randn({in}, gen).to(at::kHalf);
  const std::string m = "model.layers.0.mlp.up_proj";
  write_safetensors(dir.file("model.safetensors"), {{m + ".qweight", p.qweight},
                                                    {m + ".qzeros", p.qzeros},
                                                    {m + ".scales", p.scales},
                                                    {m + ".g_idx", p.g_idx},
                                                    {"model.norm.weight", norm}});
  const auto tensors = gptq_dequantized_tensors(dir.path());
  ASSERT_EQ(tensors.size(), 2u);
  const at::Tensor group_of = at::arange(in, at::kLong).div(group, "floor");
  const at::Tensor expected = scales.to(at::kHalf).to(at::kFloat).index_select(1, group_of) *
                              (codes.to(at::kFloat) - zeros.index_select(1, group_of));
  EXPECT_TRUE(at::equal(tensors.at(m + ".weight"), expected));
  EXPECT_TRUE(at::equal(tensors.at("model.norm.weight"), norm.to(at::kFloat)));
}

TEST(ExportReadback, AModelFromTensorsNamesWhatDoesNotFit) {
  ScratchDir dir("qtrain-readback-errors");
  write_tiny_model({.arch = "llama", .preset = "micro", .seed = 1}, dir.file("m"));
  const ModelConfig config = ModelConfig::from_file(dir.file("m") + "/config.json");
  const CheckpointReader checkpoint = CheckpointReader::open_dir(dir.file("m"));
  std::map<std::string, at::Tensor> tensors;
  for (const std::string& name : checkpoint.names()) tensors[name] = checkpoint.tensor(name);
  auto expect_shape_error = [&](const std::map<std::string, at::Tensor>& t,
                                const std::string& names) {
    try {
      causal_lm_from_tensors(config, t, at::kFloat, c10::kCPU, "src.gguf");
      FAIL() << "loaded";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kShape);
      EXPECT_NE(std::string(e.what()).find(names), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("src.gguf"), std::string::npos) << e.what();
    }
  };
  auto missing = tensors;
  missing.erase("model.norm.weight");
  expect_shape_error(missing, "missing: model.norm.weight");
  auto extra = tensors;
  extra["model.layers.9.mlp.up_proj.weight"] = at::zeros({2, 2});
  expect_shape_error(extra, "does not have: model.layers.9.mlp.up_proj.weight");
  auto reshaped = tensors;
  reshaped["model.norm.weight"] = at::zeros({3});
  expect_shape_error(reshaped, "model.norm.weight");
  EXPECT_NO_THROW(causal_lm_from_tensors(config, tensors, at::kFloat, c10::kCPU, "src"));
  try {
    load_export(dir.file("m"), ExportFormat::kAdapter, dir.file("m"), at::kFloat, c10::kCPU);
    FAIL() << "an adapter loaded as a model";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
  }
}

}  // namespace
}  // namespace qtrain

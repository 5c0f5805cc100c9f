// bitsandbytes 4-bit model directories (models/bnb_checkpoint.h): what qtrain writes reads back
// as exactly its own quantization; transformers + bitsandbytes load it on CPU with our bytes in
// their Linear4bit modules and the logits of the dense model with our dequantized weights; and
// a directory that transformers quantized and saved reads as qtrain's codes and absmax.
#include "core/error.h"
#include "formats/bnb/bnb_checkpoint.h"
#include "formats/bnb/quant_state.h"
#include "formats/safetensors/safetensors.h"
#include "models/bnb_4bit_save.h"
#include "models/hf_loader.h"
#include "models/quantized_loader.h"
#include "models/tiny_model.h"
#include "tests/quant/bnb_cpu_divergence.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
namespace t = qtrain::testing;
using nlohmann::json;

const std::vector<std::string> kLlamaLinears = {
    "mlp.down_proj",    "mlp.gate_proj",    "mlp.up_proj",     "self_attn.k_proj",
    "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"};

std::vector<std::string> llama_modules(int layers) {
  std::vector<std::string> out;
  for (int l = 0; l < layers; ++l) {
    for (const std::string& m : kLlamaLinears) {
      out.push_back("model.layers." + std::to_string(l) + "." + m);
    }
  }
  return out;
}

Error error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return Error(ErrorKind::kInternal, "no error");
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor ac = a.contiguous().cpu(), bc = b.contiguous().cpu();
  return std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.numel() * ac.element_size()) == 0;
}

void expect_equal_quantized(const QuantizedTensor& a, const QuantizedTensor& b,
                            const std::string& what) {
  EXPECT_EQ(a.type, b.type) << what;
  EXPECT_EQ(a.shape, b.shape) << what;
  EXPECT_EQ(a.dtype, b.dtype) << what;
  EXPECT_EQ(a.blocksize, b.blocksize) << what;
  EXPECT_TRUE(same_bits(a.data, b.data)) << what;
  EXPECT_TRUE(same_bits(a.code, b.code)) << what;
  ASSERT_EQ(a.nested.has_value(), b.nested.has_value()) << what;
  if (a.nested) {
    EXPECT_TRUE(same_bits(a.nested->codes, b.nested->codes)) << what;
    EXPECT_TRUE(same_bits(a.nested->absmax, b.nested->absmax)) << what;
    EXPECT_TRUE(same_bits(a.nested->code, b.nested->code)) << what;
    EXPECT_EQ(a.nested->offset, b.nested->offset) << what;
  } else {
    EXPECT_TRUE(same_bits(a.absmax, b.absmax)) << what;
  }
}

TEST(BnbCheckpointTest, WritesBnbLayoutThatReadsBackAsOurQuantization) {
  t::ScratchDir dir("bnb-ckpt");
  const std::string src = dir.file("src"), out = dir.file("out");
  write_tiny_model({.arch = "llama", .preset = "micro", .seed = 2}, src);
  const QuantConfig quant{QuantType::kNF4, 64, true};
  save_bnb_4bit_checkpoint(src, out, quant, at::kBFloat16);

  for (const char* file : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                           "special_tokens_map.json", "generation_config.json"}) {
    EXPECT_EQ(t::read_file(src + "/" + file), t::read_file(out + "/" + file)) << file;
  }
  const json config = json::parse(t::read_file(out + "/config.json"));
  EXPECT_EQ(config["quantization_config"], bnb_quantization_config_json(quant, at::kBFloat16));
  EXPECT_EQ(config["hidden_size"], 64);
  const std::optional<BnbQuantizationConfig> qc = read_bnb_quantization_config(out);
  ASSERT_TRUE(qc.has_value());
  EXPECT_EQ(qc->compute_dtype, at::kBFloat16);
  EXPECT_FALSE(read_bnb_quantization_config(src).has_value());

  const CheckpointReader source = CheckpointReader::open_dir(src);
  const CheckpointReader written = CheckpointReader::open_dir(out);
  EXPECT_EQ(bnb_4bit_modules(written), llama_modules(2));
  const auto weights = read_bnb_4bit_weights(written);
  ASSERT_EQ(weights.size(), 14u);
  for (const auto& [module, weight] : weights) {
    expect_equal_quantized(weight, quantize(source.tensor(module + ".weight"), quant), module);
    EXPECT_EQ(weight.shape, source.info(module + ".weight").shape);
    EXPECT_EQ(weight.dtype, at::kFloat);  // the source's dtype
  }
  // Everything else is copied as it is.
  std::vector<std::string> expected_dense;
  for (const std::string& name : source.names()) {
    if (!weights.count(name.substr(0, name.size() - 7))) expected_dense.push_back(name);
  }
  EXPECT_EQ(bnb_dense_tensor_names(written), expected_dense);
  for (const std::string& name : expected_dense) {
    EXPECT_TRUE(same_bits(written.tensor(name), source.tensor(name))) << name;
  }
}

TEST(BnbCheckpointTest, APrequantizedBaseSaysWhenTheRequestedQuantizationDoesNotApply) {
  t::ScratchDir dir("bnb-requested");
  const std::string src = dir.file("src"), out = dir.file("out");
  write_tiny_model({.arch = "llama", .preset = "micro", .seed = 2}, src);
  save_bnb_4bit_checkpoint(src, out, {QuantType::kNF4, 64, true}, at::kBFloat16);

  ::testing::internal::CaptureStderr();
  load_quantized_causal_lm(out, {.dtype = at::kFloat, .quant = {QuantType::kNF4, 64, true}});
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(err.find("does not apply"), std::string::npos) << err;

  ::testing::internal::CaptureStderr();
  load_quantized_causal_lm(out, {.dtype = at::kFloat, .quant = {QuantType::kFP4, 64, false}});
  err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("already quantized by bitsandbytes (nf4, blocksize 64, double quant) and "
                     "loads as it is; the requested fp4, blocksize 64 does not apply"),
            std::string::npos)
      << err;
}

TEST(BnbCheckpointTest, ShardsBiasesTiedEmbeddingsAndSkippedModules) {
  t::ScratchDir dir("bnb-ckpt");
  const std::string src = dir.file("src"), out = dir.file("out");
  // qwen2: q/k/v biases, tied embeddings (no lm_head); bfloat16 weights.
  write_tiny_model({.arch = "qwen2", .preset = "micro", .seed = 5, .dtype = "bfloat16"}, src);
  BnbSaveOptions options;
  options.skip_modules = {"lm_head", "mlp.down_proj"};
  options.max_shard_bytes = 40000;
  const QuantConfig quant{QuantType::kFP4, 128, false};
  save_bnb_4bit_checkpoint(src, out, quant, at::kFloat, options);

  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  const json qc = json::parse(t::read_file(out + "/config.json"))["quantization_config"];
  EXPECT_EQ(qc["llm_int8_skip_modules"], json::array({"lm_head", "mlp.down_proj"}));
  EXPECT_EQ(qc["bnb_4bit_quant_type"], "fp4");

  const CheckpointReader source = CheckpointReader::open_dir(src);
  const CheckpointReader written = CheckpointReader::open_dir(out);
  const std::vector<std::string> modules = bnb_4bit_modules(written);
  EXPECT_EQ(modules.size(), 12u);  // 2 layers x 6: down_proj stays dense
  for (const std::string& module : modules) {
    EXPECT_EQ(module.find("down_proj"), std::string::npos);
    const QuantizedTensor w = read_bnb_4bit_weight(written, module);
    EXPECT_EQ(w.dtype, at::kBFloat16);
    expect_equal_quantized(w, quantize(source.tensor(module + ".weight"), quant), module);
  }
  const std::vector<std::string> dense = bnb_dense_tensor_names(written);
  for (const char* name : {"model.layers.0.self_attn.q_proj.bias", "model.embed_tokens.weight",
                           "model.layers.1.mlp.down_proj.weight", "model.norm.weight"}) {
    EXPECT_NE(std::find(dense.begin(), dense.end(), name), dense.end()) << name;
    EXPECT_TRUE(same_bits(written.tensor(name), source.tensor(name))) << name;
  }
}

TEST(BnbCheckpointTest, ErrorsLeaveNothingBehind) {
  t::ScratchDir dir("bnb-ckpt");
  const std::string src = dir.file("src");
  write_tiny_model({.arch = "llama", .preset = "micro"}, src);
  const QuantConfig nf4{QuantType::kNF4, 64, false};

  fs::create_directories(dir.file("full"));
  t::write_file(dir.file("full/keep.txt"), "x");
  EXPECT_EQ(
      error_of([&] { save_bnb_4bit_checkpoint(src, dir.file("full"), nf4, at::kFloat); }).kind(),
      ErrorKind::kIo);
  EXPECT_EQ(t::read_file(dir.file("full/keep.txt")), "x");

  EXPECT_EQ(
      error_of([&] {
        save_bnb_4bit_checkpoint(src, dir.file("o1"), {QuantType::kInt8, 64, false}, at::kFloat);
      }).kind(),
      ErrorKind::kUnsupported);
  EXPECT_EQ(error_of([&] {
              save_bnb_4bit_checkpoint(dir.file("nowhere"), dir.file("o2"), nf4, at::kFloat);
            }).kind(),
            ErrorKind::kIo);
  save_bnb_4bit_checkpoint(src, dir.file("q"), nf4, at::kFloat);
  const Error twice =
      error_of([&] { save_bnb_4bit_checkpoint(dir.file("q"), dir.file("o3"), nf4, at::kFloat); });
  EXPECT_EQ(twice.kind(), ErrorKind::kConfig);
  EXPECT_EQ(twice.context().field, "quantization_config");

  // Only src, full and q remain: no output or staging directory of the failed calls.
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    left.push_back(entry.path().filename().string());
  }
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"full", "q", "src"}));
}

TEST(BnbCheckpointTest, MalformedDirectoriesNameTheTensor) {
  t::ScratchDir dir("bnb-ckpt");
  const at::Tensor w = at::randn({16, 64});
  const QuantizedTensor q = quantize(w, {QuantType::kNF4, 64, true});
  NamedTensors entries = to_bnb_entries("a.proj", q);

  NamedTensors missing;
  for (const auto& e : entries) {
    if (e.first != "a.proj.weight.nested_absmax") missing.push_back(e);
  }
  write_safetensors(dir.file("missing.safetensors"), missing);
  const CheckpointReader broken = CheckpointReader::open_file(dir.file("missing.safetensors"));
  const Error e = error_of([&] { read_bnb_4bit_weights(broken); });
  EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  EXPECT_EQ(e.context().tensor, "a.proj.weight.nested_absmax");
  EXPECT_EQ(e.context().file, dir.file("missing.safetensors"));

  NamedTensors orphan = entries;
  orphan.emplace_back("b.proj.weight", w);
  orphan.emplace_back("b.proj.weight.absmax", at::ones({16}));
  write_safetensors(dir.file("orphan.safetensors"), orphan);
  const CheckpointReader stray = CheckpointReader::open_file(dir.file("orphan.safetensors"));
  const Error o = error_of([&] { bnb_dense_tensor_names(stray); });
  EXPECT_EQ(o.kind(), ErrorKind::kFormat);
  EXPECT_EQ(o.context().tensor, "b.proj.weight.absmax");
}

// ---------------------------------------------------------------------------------------------
// With transformers + bitsandbytes

const std::vector<std::vector<int64_t>> kInputIds = {{1, 5, 17, 3, 88, 42, 7, 7, 60, 2, 95, 31},
                                                     {1, 90, 12, 12, 44, 0, 63, 8, 21, 77, 50, 9}};

at::Tensor input_ids() {
  at::Tensor ids = at::empty({2, 12}, at::kLong);
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t c = 0; c < 12; ++c) ids[r][c] = kInputIds[r][c];
  return ids;
}

// The dense float32 model of `src` with every 4-bit weight of `quantized_dir` dequantized in.
at::Tensor logits_with_dequantized_weights(const std::string& src,
                                           const std::string& quantized_dir) {
  auto model = load_causal_lm(src, {.dtype = at::kFloat});
  const auto weights = read_bnb_4bit_weights(CheckpointReader::open_dir(quantized_dir));
  torch::NoGradGuard no_grad;
  auto params = model->named_parameters(true);
  for (const auto& [module, weight] : weights) {
    at::Tensor* p = params.find(module + ".weight");
    if (p == nullptr) {
      ADD_FAILURE() << "no parameter " << module << ".weight";
      continue;
    }
    p->copy_(weight.dequantize(at::kFloat));
  }
  return model->forward({.input_ids = input_ids()});
}

TEST(BnbCheckpointInteropTest, TransformersLoadsOurFourBitDirectory) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  t::ScratchDir dir("bnb-ckpt");
  const std::string src = dir.file("src");
  write_tiny_model({.arch = "llama", .preset = "micro", .seed = 3}, src);
  const std::vector<std::pair<std::string, QuantConfig>> cases = {
      {"nf4_nested", {QuantType::kNF4, 64, true}}, {"fp4_128", {QuantType::kFP4, 128, false}}};
  std::vector<std::string> args = {dir.file("inputs.json")};
  t::write_file(args[0], json{{"input_ids", kInputIds}}.dump());
  for (const auto& [label, quant] : cases) {
    args.push_back(dir.file(label));
    save_bnb_4bit_checkpoint(src, args.back(), quant, at::kFloat);
  }
  std::string log;
  ASSERT_EQ(t::run_reference_script("load_bnb_4bit.py", args, &log), 0) << log;
  std::cout << log;

  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].first);
    const std::string out = dir.file(cases[i].first);
    const at::Tensor theirs =
        CheckpointReader::open_file(out + "/bnb_logits.safetensors").tensor("logits");
    const at::Tensor ours = logits_with_dequantized_weights(src, out);
    ASSERT_EQ(ours.sizes(), theirs.sizes());
    const double diff = t::max_abs_diff(ours, theirs);
    std::cout << cases[i].first << ": max |logit diff| vs transformers+bnb = " << diff << "\n";
    EXPECT_LE(diff, 1e-3);
    EXPECT_GT(theirs.abs().max().item<double>(), 0.1);
  }
}

TEST(BnbCheckpointInteropTest, ReadsWhatTransformersSaved) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  t::ScratchDir dir("bnb-ckpt");
  const std::string src = dir.file("src");
  write_tiny_model({.arch = "llama", .preset = "micro", .seed = 4}, src);
  const CheckpointReader source = CheckpointReader::open_dir(src);
  for (const QuantConfig& quant :
       {QuantConfig{QuantType::kNF4, 64, true}, QuantConfig{QuantType::kFP4, 64, false}}) {
    const std::string label = quant_type_name(quant.type) + (quant.double_quant ? "_nested" : "");
    SCOPED_TRACE(label);
    const std::string out = dir.file(label);
    std::string log;
    ASSERT_EQ(t::run_reference_script(
                  "bnb_save_4bit.py",
                  {src, out, quant_type_name(quant.type), quant.double_quant ? "1" : "0"}, &log),
              0)
        << log;

    const std::optional<BnbQuantizationConfig> qc = read_bnb_quantization_config(out);
    ASSERT_TRUE(qc.has_value());
    EXPECT_EQ(qc->type, quant.type);
    EXPECT_EQ(qc->double_quant, quant.double_quant);
    EXPECT_EQ(qc->compute_dtype, at::kFloat);
    EXPECT_FALSE(qc->skip_modules.has_value());

    const CheckpointReader saved = CheckpointReader::open_dir(out);
    EXPECT_EQ(bnb_4bit_modules(saved), llama_modules(2));
    t::Divergences total;
    for (const auto& [module, theirs] : read_bnb_4bit_weights(saved)) {
      const at::Tensor w = source.tensor(module + ".weight");
      const QuantizedTensor plain = quantize(w, {quant.type, quant.blocksize, false});
      const QuantizedTensor ours = quantize(w, quant);
      EXPECT_EQ(theirs.shape, ours.shape);
      EXPECT_EQ(theirs.dtype, ours.dtype);
      EXPECT_TRUE(same_bits(theirs.code, ours.code)) << module;
      const std::string state =
          module + ".weight.quant_state.bitsandbytes__" + quant_type_name(quant.type);
      const at::Tensor state_bytes = saved.tensor(state).contiguous();
      EXPECT_EQ(bnb_quant_state_json(ours),
                std::string(reinterpret_cast<const char*>(state_bytes.data_ptr<uint8_t>()),
                            state_bytes.numel()))
          << module;
      t::Divergences d = t::compare_4bit_codes(w, quant.type, quant.blocksize, plain.absmax,
                                               ours.data, theirs.data, module);
      if (quant.double_quant) {
        EXPECT_EQ(theirs.nested->offset, ours.nested->offset) << module;
        EXPECT_TRUE(same_bits(theirs.nested->absmax, ours.nested->absmax)) << module;
        EXPECT_TRUE(same_bits(theirs.nested->code, ours.nested->code)) << module;
        const t::Divergences nested = t::compare_nested_codes(
            plain.absmax, ours.nested->offset, ours.nested->absmax, ours.nested->blocksize,
            ours.nested->codes, theirs.nested->codes, module);
        d.nested_lut = nested.nested_lut;
        d.unexplained += nested.unexplained;
      } else {
        EXPECT_TRUE(same_bits(theirs.absmax, ours.absmax)) << module;
      }
      total.fp4_zero_sign += d.fp4_zero_sign;
      total.fp4_threshold += d.fp4_threshold;
      total.nested_lut += d.nested_lut;
      total.unexplained += d.unexplained;
    }
    std::cout << label << ": codes differing from bnb-cpu (documented zones): fp4 sign of zero "
              << total.fp4_zero_sign << ", fp4 thresholds " << total.fp4_threshold
              << ", nested lookup table " << total.nested_lut << "\n";
    EXPECT_EQ(total.unexplained, 0);
    for (const std::string& name : bnb_dense_tensor_names(saved)) {
      EXPECT_TRUE(same_bits(saved.tensor(name), source.tensor(name))) << name;
    }
  }
}

}  // namespace
}  // namespace qtrain

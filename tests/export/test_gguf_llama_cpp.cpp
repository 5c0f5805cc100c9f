// GGUF exports run in llama.cpp itself (llama-cpp-python, tests/reference/llama_cpp_logits.py):
//   - F32 / F16 / Q8_0 logits against qtrain's own float32 forward of the HF checkpoint;
//   - perplexity of Q8_0 / Q4_0 / Q4_K_M files against the F16 file on license text;
//   - our Q8_0 / Q4_0 / Q4_K_M files against llama_model_quantize of our F16 file: the same type
//     and the same bytes for every tensor;
//   - a byte-level BPE (Llama 3 style tokenizer.json) export tokenizes like HF tokenizers and
//     qtrain's BpeTokenizer.
// The model is a generated llama with hidden 256 and intermediate 512, so every matrix takes the
// K-quant path, stored as float16 so that llama.cpp quantizes the very values we do.
// Skipped when llama_cpp is not installed (scripts/llama_cpp_wheel.sh), failed instead under
// QTRAIN_REQUIRE_INTEROP=1.
#include "data/bpe_tokenizer.h"
#include "data/sentencepiece_tokenizer.h"
#include "export/gguf_export.h"
#include "formats/safetensors/safetensors.h"
#include "models/hf_loader.h"
#include "models/llama.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::ScratchDir;

// Runs llama_cpp_logits.py; returns its JSON, or null when llama_cpp is missing (exit 3).
json llama_cpp(const std::vector<std::string>& args) {
  std::string output;
  const int rc = testing::run_reference_script("llama_cpp_logits.py", args, &output);
  if (rc == 3) return nullptr;
  EXPECT_EQ(rc, 0) << output.substr(0, 4000);
  const size_t brace = output.find('{');
  if (rc != 0 || brace == std::string::npos) return json::object();
  return json::parse(output.substr(brace));
}

#define QTRAIN_REQUIRE_LLAMA_CPP()                                                 \
  do {                                                                             \
    QTRAIN_REQUIRE_REFERENCE_PYTHON();                                             \
    if (llama_cpp({"check"}).is_null()) {                                          \
      const char* r = std::getenv("QTRAIN_REQUIRE_INTEROP");                       \
      if (r && std::string(r) == "1") FAIL() << "llama_cpp missing from the venv"; \
      GTEST_SKIP() << "llama_cpp not installed (scripts/llama_cpp_wheel.sh)";      \
    }                                                                              \
  } while (0)

class GgufLlamaCppTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("qtrain-gguf-llama-cpp");
    TinyModelOptions o;
    o.arch = "llama";
    o.preset = "micro";
    o.seed = 3;
    o.dtype = "float16";
    o.hidden_size = 256;
    o.intermediate_size = 512;
    o.num_hidden_layers = 3;
    o.num_attention_heads = 4;
    o.num_key_value_heads = 2;
    write_tiny_model(o, hf());
    // Text the tokenizer was trained on: BOS + the first 127 pieces of the GPL-3.
    const SentencePieceTokenizer spm = SentencePieceTokenizer::load(hf() + "/tokenizer.model");
    std::vector<int64_t> all =
        spm.encode(testing::read_file("/usr/share/common-licenses/GPL-3"), true, false);
    ids_ = new std::vector<int64_t>(all.begin(), all.begin() + 128);
    testing::write_file(file("ids.json"), json(*ids_).dump());
  }
  static void TearDownTestSuite() {
    delete ids_;
    delete dir_;
  }
  static std::string hf() { return dir_->file("llama"); }
  static std::string file(const std::string& name) { return dir_->file(name); }

  // The exported file of `outtype`, written once.
  static std::string exported(GgufOutType outtype) {
    const std::string path = file("ours-" + gguf_outtype_name(outtype) + ".gguf");
    if (!fs::exists(path)) export_gguf(hf(), path, {.outtype = outtype});
    return path;
  }

  static ScratchDir* dir_;
  static std::vector<int64_t>* ids_;
};

ScratchDir* GgufLlamaCppTest::dir_ = nullptr;
std::vector<int64_t>* GgufLlamaCppTest::ids_ = nullptr;

// qtrain's logits [T, V] for `ids`, float32.
at::Tensor qtrain_logits(const std::string& hf_dir, const std::vector<int64_t>& ids) {
  auto model = load_causal_lm(hf_dir);
  model->eval();
  at::NoGradGuard no_grad;
  at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0);
  return model->forward({.input_ids = input})[0].to(at::kFloat);
}

at::Tensor logits_of(const json& r) {
  std::vector<float> flat;
  for (const auto& row : r["logits"]) {
    for (const auto& v : row) flat.push_back(v.get<float>());
  }
  return at::tensor(flat).reshape({static_cast<int64_t>(r["logits"].size()), -1});
}

// Tolerances on max |llama.cpp - qtrain| over all 128 x 384 logits (max |logit| ~ 4.7 here;
// measured: F32 6e-6, F16 2.8e-3, Q8_0 0.13). F32 differs by summation order only; an F16 file
// holds the checkpoint's exact float16 values, but ggml's CPU matmul rounds the activations to
// fp16 (2^-11 relative) before its dot products; Q8_0 quantizes weights (up to 0.42% of each
// block's max) and, in ggml's Q8_0 x Q8_0 dot products, the activations too, in every one of the
// 22 matmuls, so its bound is 5% of the largest logit.
TEST_F(GgufLlamaCppTest, LogitsMatchQtrainForward) {
  QTRAIN_REQUIRE_LLAMA_CPP();
  const at::Tensor ours = qtrain_logits(hf(), *ids_);
  const std::map<GgufOutType, double> tolerance = {
      {GgufOutType::kF32, 1e-4}, {GgufOutType::kF16, 1e-2}, {GgufOutType::kQ8_0, 0.25}};
  for (const auto& [outtype, tol] : tolerance) {
    const json r = llama_cpp({"eval", exported(outtype), file("ids.json")});
    ASSERT_TRUE(r.contains("logits")) << gguf_outtype_name(outtype);
    const at::Tensor theirs = logits_of(r);
    ASSERT_EQ(theirs.sizes(), ours.sizes());
    const double diff = testing::max_abs_diff(theirs, ours);
    std::cout << "[ llama.cpp ] " << gguf_outtype_name(outtype)
              << ": max |logit diff| vs qtrain = " << diff << " (max |logit| "
              << ours.abs().max().item<float>() << ")\n";
    EXPECT_LE(diff, tol) << gguf_outtype_name(outtype);
  }
}

// Perplexity on the license text. The weights are random, so it is about twice the vocabulary
// size (measured: F16 747, Q8_0 x1.005, Q4_0 x1.089, Q4_K_M x1.107); what matters is that
// quantization moves it little and in proportion to the bits: Q8_0 within 2%, 4-bit within 25%.
TEST_F(GgufLlamaCppTest, QuantizedPerplexityStaysNearF16) {
  QTRAIN_REQUIRE_LLAMA_CPP();
  const json f16 = llama_cpp({"eval", exported(GgufOutType::kF16), file("ids.json")});
  ASSERT_TRUE(f16.contains("ppl"));
  const double base = f16["ppl"].get<double>();
  std::cout << "[ llama.cpp ] perplexity F16 " << base << "\n";
  const std::map<GgufOutType, double> factor = {
      {GgufOutType::kQ8_0, 1.02}, {GgufOutType::kQ4_0, 1.25}, {GgufOutType::kQ4_K_M, 1.25}};
  for (const auto& [outtype, f] : factor) {
    const json r = llama_cpp({"eval", exported(outtype), file("ids.json")});
    ASSERT_TRUE(r.contains("ppl"));
    const double ppl = r["ppl"].get<double>();
    std::cout << "[ llama.cpp ] perplexity " << gguf_outtype_name(outtype) << " " << ppl << " (x"
              << ppl / base << ")\n";
    EXPECT_LE(ppl, base * f) << gguf_outtype_name(outtype);
    EXPECT_GE(ppl, base / f) << gguf_outtype_name(outtype);
  }
}

TEST_F(GgufLlamaCppTest, QuantizedFilesEqualLlamaQuantizeOfTheF16File) {
  QTRAIN_REQUIRE_LLAMA_CPP();
  const std::string f16 = exported(GgufOutType::kF16);
  const std::map<GgufOutType, int> ftypes = {
      {GgufOutType::kQ8_0, 7}, {GgufOutType::kQ4_0, 2}, {GgufOutType::kQ4_K_M, 15}};
  for (const auto& [outtype, ftype] : ftypes) {
    const std::string name = gguf_outtype_name(outtype);
    const std::string theirs = file("llama-quantize-" + name + ".gguf");
    ASSERT_FALSE(llama_cpp({"quantize", f16, theirs, std::to_string(ftype)}).empty());
    const json r = llama_cpp({"compare", exported(outtype), theirs});
    EXPECT_TRUE(r["only_a"].empty()) << name << r["only_a"];
    EXPECT_TRUE(r["only_b"].empty()) << name << r["only_b"];
    int equal = 0;
    std::map<std::string, int> types;
    for (const auto& [tensor, c] : r["tensors"].items()) {
      EXPECT_EQ(c["type_a"], c["type_b"]) << name << " " << tensor;
      EXPECT_TRUE(c["bytes_equal"].get<bool>()) << name << " " << tensor << " " << c.dump();
      equal += c["bytes_equal"].get<bool>();
      types[c["type_a"].get<std::string>()]++;
    }
    std::cout << "[ llama.cpp ] " << name << ": " << equal << "/" << r["tensors"].size()
              << " tensors byte-identical to llama_model_quantize; types " << json(types) << "\n";
  }
}

// The tiny llama with a trained Llama-3-style byte-level BPE instead of its SentencePiece model
// (embeddings resized to the new vocabulary).
TEST(GgufLlamaCppBpeTest, TokenizesLikeHfAndQtrain) {
  QTRAIN_REQUIRE_LLAMA_CPP();
  ScratchDir dir;
  std::string output;
  ASSERT_EQ(0, testing::run_reference_script("bpe_reference.py",
                                             {"train", "llama3", dir.file("tok")}, &output))
      << output;
  TinyModelOptions o;
  o.preset = "micro";
  const std::string hf = dir.file("llama");
  write_tiny_model(o, hf);
  const BpeTokenizer bpe =
      BpeTokenizer::load(dir.file("tok/tokenizer.json"), dir.file("tok/tokenizer_config.json"));
  const int64_t vocab = bpe.vocab_size();
  {
    const CheckpointReader reader = CheckpointReader::open_dir(hf);
    NamedTensors tensors;
    for (const auto& name : reader.names()) {
      at::Tensor t = reader.tensor(name).clone();
      if (name == "model.embed_tokens.weight" || name == "lm_head.weight") {
        t = at::randn({vocab, t.size(1)}, t.options()) * 0.1;
      }
      tensors.emplace_back(name, t);
    }
    write_safetensors(hf + "/model.safetensors", tensors);
  }
  json config = json::parse(testing::read_file(hf + "/config.json"));
  config["vocab_size"] = vocab;
  config["bos_token_id"] = bpe.bos_id();
  config["eos_token_id"] = bpe.eos_id();
  testing::write_file(hf + "/config.json", config.dump(2));
  fs::remove(hf + "/tokenizer.model");
  fs::remove(hf + "/special_tokens_map.json");
  fs::copy_file(dir.file("tok/tokenizer.json"), hf + "/tokenizer.json",
                fs::copy_options::overwrite_existing);
  fs::copy_file(dir.file("tok/tokenizer_config.json"), hf + "/tokenizer_config.json",
                fs::copy_options::overwrite_existing);
  export_gguf(hf, dir.file("bpe.gguf"), {.outtype = GgufOutType::kF16});

  const json reference = json::parse(testing::read_file(dir.file("tok/reference.json")));
  json texts = json::array();
  for (const auto& c : reference["cases"]) texts.push_back(c["text"]);
  testing::write_file(dir.file("texts.json"), texts.dump());
  const json r = llama_cpp({"tokenize", dir.file("bpe.gguf"), dir.file("texts.json")});
  ASSERT_EQ(r["ids"].size(), texts.size());
  int same = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int64_t> hf_ids = reference["cases"][i]["ids"];
    const std::vector<int64_t> theirs = r["ids"][i];
    EXPECT_EQ(theirs, hf_ids) << "text " << i << ": " << texts[i].dump();
    EXPECT_EQ(bpe.encode(texts[i].get<std::string>()), hf_ids) << "text " << i;
    same += theirs == hf_ids;
  }
  std::cout << "[ llama.cpp ] BPE: " << same << "/" << texts.size()
            << " texts tokenized as HF tokenizers does\n";
}

}  // namespace
}  // namespace qtrain

// GGUF exports of the Gemma 2 and Phi-3 families run in llama.cpp (llama-cpp-python,
// tests/reference/llama_cpp_logits.py): the architecture names and tensor layouts llama.cpp
// expects (gemma2: (1 + w) norms stored as 1 + w, post-attention / pre- and post-feedforward
// norms, soft caps and sliding window in the metadata; phi3: attn_qkv and the fused ffn_up, and
// Phi-3's added tokens, which llama.cpp's Phi-3 vocabulary setup looks up by text), with F32 and
// F16 logits against qtrain's own float32 forward over 128 tokens of license text (longer than
// gemma2's 16-token window). The qtiny models are stored as float16 so that an F16 file holds
// the very values qtrain computes with.
#include "data/sentencepiece_tokenizer.h"
#include "export/gguf_export.h"
#include "formats/gguf/gguf_reader.h"
#include "models/hf_loader.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <map>
#include <set>

namespace qtrain {
namespace {

using nlohmann::json;
namespace t = qtrain::testing;

std::string write_json(const std::string& path, const json& value) {
  t::write_file(path, value.dump());
  return path;
}

json llama_cpp(const std::vector<std::string>& args) {
  std::string output;
  const int rc = t::run_reference_script("llama_cpp_logits.py", args, &output);
  if (rc == 3) return nullptr;
  EXPECT_EQ(rc, 0) << output.substr(0, 4000);
  const size_t brace = output.find('{');
  if (rc != 0 || brace == std::string::npos) return json::object();
  return json::parse(output.substr(brace));
}

at::Tensor logits_of(const json& r) {
  std::vector<float> flat;
  for (const auto& row : r["logits"]) {
    for (const auto& v : row) flat.push_back(v.get<float>());
  }
  return at::tensor(flat).reshape({static_cast<int64_t>(r["logits"].size()), -1});
}

TEST(GgufFamilies, Gemma2AndPhi3ExportsRunInLlamaCppWithQtrainsLogits) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  if (llama_cpp({"check"}).is_null()) {
    const char* r = std::getenv("QTRAIN_REQUIRE_INTEROP");
    if (r && std::string(r) == "1") FAIL() << "llama_cpp missing from the venv";
    GTEST_SKIP() << "llama_cpp not installed (scripts/llama_cpp_wheel.sh)";
  }
  t::ScratchDir scratch("qtrain-gguf-families");
  for (const std::string arch : {"gemma2", "phi3"}) {
    SCOPED_TRACE(arch);
    const std::string hf = scratch.file(arch);
    TinyModelOptions o;
    o.arch = arch;
    o.preset = "micro";
    o.seed = 5;
    o.dtype = "float16";
    write_tiny_model(o, hf);
    const SentencePieceTokenizer spm = SentencePieceTokenizer::load(hf + "/tokenizer.model");
    std::vector<int64_t> ids =
        spm.encode(t::read_file("/usr/share/common-licenses/GPL-3"), true, false);
    ids.resize(128);
    const std::string ids_path = scratch.file(arch + "-ids.json");
    t::write_file(ids_path, json(ids).dump());

    auto model = load_causal_lm(hf);  // float32 compute over the float16 checkpoint
    model->eval();
    at::Tensor ours;
    {
      at::NoGradGuard no_grad;
      ours = model->forward({.input_ids = at::tensor(ids, at::kLong).unsqueeze(0)})[0];
    }
    for (const GgufOutType outtype : {GgufOutType::kF32, GgufOutType::kF16}) {
      const std::string path = scratch.file(arch + "-" + gguf_outtype_name(outtype) + ".gguf");
      export_gguf(hf, path, {.outtype = outtype});
      const GgufReader file = GgufReader::open(path);
      EXPECT_EQ(file.get_string("general.architecture"), arch);
      std::set<std::string> names;
      for (const auto& tensor : file.tensors()) names.insert(tensor.name);
      if (arch == "gemma2") {
        for (const char* n : {"blk.1.post_attention_norm.weight", "blk.1.ffn_norm.weight",
                              "blk.1.post_ffw_norm.weight", "blk.1.attn_q.weight"}) {
          EXPECT_TRUE(names.count(n)) << n;
        }
        EXPECT_FALSE(names.count("output.weight"));  // tied
        EXPECT_EQ(file.get_u32("gemma2.attention.sliding_window"), 16u);
        EXPECT_EQ(file.get_f32("gemma2.attn_logit_softcapping"), 50.0f);
        EXPECT_EQ(file.get_f32("gemma2.final_logit_softcapping"), 30.0f);
        // (1 + w) norms are stored as 1 + w.
        const at::Tensor stored = file.read_tensor("blk.0.post_ffw_norm.weight").to(at::kFloat);
        const at::Tensor w =
            model->model->layers[0]->post_feedforward_layernorm->weight().to(at::kFloat);
        EXPECT_TRUE(at::equal(stored, w + 1.0));
      } else {
        EXPECT_TRUE(names.count("blk.0.attn_qkv.weight"));
        EXPECT_TRUE(names.count("blk.0.ffn_up.weight"));
        EXPECT_FALSE(names.count("blk.0.attn_q.weight"));
        EXPECT_FALSE(names.count("blk.0.ffn_gate.weight"));
        // Phi-3's added tokens follow the pieces as control tokens; the rows past them are padding.
        const GgufValue* tokens = file.find("tokenizer.ggml.tokens");
        const GgufValue* types = file.find("tokenizer.ggml.token_type");
        ASSERT_TRUE(tokens && types);
        ASSERT_EQ(tokens->items.size(), static_cast<size_t>(ours.size(1)));
        const std::vector<std::string> added = {
            "<|endoftext|>",    "<|assistant|>",    "<|placeholder1|>", "<|placeholder2|>",
            "<|placeholder3|>", "<|placeholder4|>", "<|system|>",       "<|end|>",
            "<|placeholder5|>", "<|placeholder6|>", "<|user|>"};
        const size_t first = static_cast<size_t>(spm.vocab_size());
        for (size_t k = 0; k < added.size(); ++k) {
          EXPECT_EQ(tokens->items[first + k].s, added[k]);
          EXPECT_EQ(types->items[first + k].i, 3);  // control
        }
        EXPECT_EQ(tokens->items.back().s, "[PAD" + std::to_string(tokens->items.size() - 1) + "]");
        // llama.cpp reads them as single tokens.
        const json tok = llama_cpp({"tokenize", path,
                                    write_json(scratch.file("phi3-texts.json"),
                                               json({"<|user|>Hi<|end|><|assistant|>"}))});
        ASSERT_TRUE(tok.contains("ids"));
        const auto ids_of_chat = tok["ids"][0].get<std::vector<int64_t>>();
        ASSERT_GE(ids_of_chat.size(), 4u);
        EXPECT_EQ(ids_of_chat.front(), static_cast<int64_t>(first + 10));
        EXPECT_EQ(ids_of_chat.back(), static_cast<int64_t>(first + 1));
        EXPECT_EQ(ids_of_chat[ids_of_chat.size() - 2], static_cast<int64_t>(first + 7));
      }
      const json r = llama_cpp({"eval", path, ids_path});
      ASSERT_TRUE(r.contains("logits"));
      const at::Tensor theirs = logits_of(r);
      ASSERT_EQ(theirs.sizes(), ours.sizes());
      const double diff = t::max_abs_diff(theirs, ours);
      std::cout << "[ llama.cpp ] " << arch << " " << gguf_outtype_name(outtype)
                << ": max |logit diff| vs qtrain = " << diff << " (max |logit| "
                << ours.abs().max().item<float>() << ")\n";
      // gemma2: ggml's GELU reads a float16 table, so even F32 files differ at 1e-3 (measured:
      // F32 1.8e-3, F16 5.2e-3 at max |logit| 13.8). phi3 (SiLU) computes F32 files in float32
      // throughout (measured: F32 4.2e-6, F16 3.2e-3 at max |logit| 4.7: ggml rounds the
      // activations to float16 for F16 weights).
      const bool f32 = outtype == GgufOutType::kF32;
      if (arch == "gemma2") {
        EXPECT_LE(diff, f32 ? 5e-3 : 2e-2);
      } else {
        EXPECT_LE(diff, f32 ? 1e-4 : 1e-2);
      }
    }
  }
}

}  // namespace
}  // namespace qtrain

// GGUF exports of the Gemma 2, Gemma 3 and Phi-3 families run in llama.cpp (llama-cpp-python,
// tests/reference/llama_cpp_logits.py): the architecture names and tensor layouts llama.cpp
// expects (gemma2/gemma3: (1 + w) norms stored as 1 + w, post-attention / pre- and post-feedforward
// norms, soft caps and sliding window in the metadata; gemma3: q/k norms, which layers slide as a
// per-layer flag array, the sliding layers' RoPE base, linear rope scaling of the full layers;
// phi3: attn_qkv and the fused ffn_up, and Phi-3's added tokens, which llama.cpp's Phi-3
// vocabulary setup looks up by text), with F32 and F16 logits against qtrain's own float32
// forward over 128 tokens of license text (longer than the 16-token windows). The qtiny models
// are stored as float16 so that an F16 file holds the very values qtrain computes with.
#include "core/error.h"
#include "data/sentencepiece_tokenizer.h"
#include "export/gguf_export.h"
#include "formats/gguf/gguf_reader.h"
#include "formats/safetensors/safetensors.h"
#include "models/hf_loader.h"
#include "models/llama.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <functional>
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

#define QTRAIN_REQUIRE_LLAMA_CPP()                                                 \
  do {                                                                             \
    QTRAIN_REQUIRE_REFERENCE_PYTHON();                                             \
    if (llama_cpp({"check"}).is_null()) {                                          \
      const char* r = std::getenv("QTRAIN_REQUIRE_INTEROP");                       \
      if (r && std::string(r) == "1") FAIL() << "llama_cpp missing from the venv"; \
      GTEST_SKIP() << "llama_cpp not installed (scripts/llama_cpp_wheel.sh)";      \
    }                                                                              \
  } while (0)

TEST(GgufFamilies, Gemma2AndPhi3ExportsRunInLlamaCppWithQtrainsLogits) {
  QTRAIN_REQUIRE_LLAMA_CPP();
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

// ---- Gemma 3 ----------------------------------------------------------------------------------

void edit_json_file(const std::string& path, const std::function<void(json&)>& edit) {
  json value = json::parse(t::read_file(path));
  edit(value);
  t::write_file(path, value.dump(2));
}

void edit_config(const std::string& hf, const std::function<void(json&)>& edit) {
  edit_json_file(hf + "/config.json", edit);
}

void edit_tokenizer_config(const std::string& hf, const std::function<void(json&)>& edit) {
  edit_json_file(hf + "/tokenizer_config.json", edit);
}

// qtiny's gemma3 (micro, float16): two layers, the first sliding (window 16, RoPE 1e4), the second
// full (RoPE 1e6), no soft cap. Its pattern is not Gemma 3's period of 6, so llama.cpp must read
// the per-layer flags.
std::string write_gemma3(const std::string& hf, int64_t layers = 2) {
  TinyModelOptions o;
  o.arch = "gemma3";
  o.preset = "micro";
  o.seed = 7;
  o.dtype = "float16";
  o.num_hidden_layers = layers;
  write_tiny_model(o, hf);
  return hf;
}

// Six layers in Gemma 3 4B's config.json spelling (transformers 4.x): sliding_window_pattern 6
// (layer 5 full), rope_local_base_freq (5e4 here, not llama.cpp's default 1e4), linear rope
// scaling 8 on the full layers, and a final soft cap (10: logits of a few units bend visibly).
std::string write_gemma3_scaled(const std::string& hf) {
  write_gemma3(hf, 6);
  edit_config(hf, [](json& j) {
    j.erase("layer_types");
    j.erase("rope_parameters");
    j["sliding_window_pattern"] = 6;
    j["rope_theta"] = 1e6;
    j["rope_local_base_freq"] = 5e4;
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}};
    j["final_logit_softcapping"] = 10.0;
  });
  return hf;
}

TEST(GgufFamilies, Gemma3MetadataAndTensorsAreLlamaCpps) {
  t::ScratchDir scratch("qtrain-gguf-gemma3-layout");
  for (const bool scaled : {false, true}) {
    SCOPED_TRACE(scaled ? "scaled" : "qtiny");
    const std::string hf =
        scaled ? write_gemma3_scaled(scratch.file("scaled")) : write_gemma3(scratch.file("qtiny"));
    const std::string path = scratch.file(scaled ? "scaled.gguf" : "qtiny.gguf");
    export_gguf(hf, path, {.outtype = GgufOutType::kF32});
    const GgufReader file = GgufReader::open(path);
    const int64_t layers = scaled ? 6 : 2;
    EXPECT_EQ(file.get_string("general.architecture"), "gemma3");
    EXPECT_EQ(file.get_u32("gemma3.block_count"), layers);
    EXPECT_EQ(file.get_u32("gemma3.embedding_length"), 64u);
    EXPECT_EQ(file.get_u32("gemma3.feed_forward_length"), 128u);
    EXPECT_EQ(file.get_u32("gemma3.attention.head_count"), 4u);
    EXPECT_EQ(file.get_u32("gemma3.attention.head_count_kv"), 2u);
    EXPECT_EQ(file.get_u32("gemma3.attention.key_length"), 16u);
    EXPECT_EQ(file.get_u32("gemma3.attention.value_length"), 16u);
    EXPECT_EQ(file.get_u32("gemma3.context_length"), 2048u);
    EXPECT_EQ(file.get_f32("gemma3.attention.layer_norm_rms_epsilon"), 1e-6f);
    EXPECT_EQ(file.get_u32("gemma3.attention.sliding_window"), 16u);
    EXPECT_EQ(file.get_f32("gemma3.rope.freq_base"), 1e6f);
    EXPECT_EQ(file.get_f32("gemma3.rope.freq_base_swa"), scaled ? 5e4f : 1e4f);
    const GgufValue* pattern = file.find("gemma3.attention.sliding_window_pattern");
    ASSERT_TRUE(pattern);
    EXPECT_EQ(gguf_value_type_name(*pattern), "ARRAY[BOOL]");
    std::vector<uint64_t> slides;
    for (const GgufValue& v : pattern->items) slides.push_back(v.u);
    const std::vector<uint64_t> want =
        scaled ? std::vector<uint64_t>{1, 1, 1, 1, 1, 0} : std::vector<uint64_t>{1, 0};
    EXPECT_EQ(slides, want);
    EXPECT_FALSE(file.find("gemma3.attn_logit_softcapping"));
    if (scaled) {
      EXPECT_EQ(file.get_string("gemma3.rope.scaling.type"), "linear");
      EXPECT_EQ(file.get_f32("gemma3.rope.scaling.factor"), 8.0f);
      EXPECT_EQ(file.get_f32("gemma3.final_logit_softcapping"), 10.0f);
    } else {
      EXPECT_FALSE(file.find("gemma3.rope.scaling.type"));
      EXPECT_FALSE(file.find("gemma3.final_logit_softcapping"));
    }

    std::set<std::string> names;
    for (const auto& tensor : file.tensors()) names.insert(tensor.name);
    for (const char* n :
         {"token_embd.weight", "output_norm.weight", "blk.1.attn_norm.weight",
          "blk.1.attn_q.weight", "blk.1.attn_k.weight", "blk.1.attn_v.weight",
          "blk.1.attn_output.weight", "blk.1.attn_q_norm.weight", "blk.1.attn_k_norm.weight",
          "blk.1.post_attention_norm.weight", "blk.1.ffn_norm.weight", "blk.1.post_ffw_norm.weight",
          "blk.1.ffn_gate.weight", "blk.1.ffn_up.weight", "blk.1.ffn_down.weight"}) {
      EXPECT_TRUE(names.count(n)) << n;
    }
    EXPECT_EQ(names.size(), 2u + 13u * layers);  // tied: no output.weight
    // Every (1 + w) norm, q/k norms included, is stored as 1 + w (float32); the projections are
    // not permuted (llama.cpp rotates gemma3 in NeoX halves, as HF does).
    auto model = load_causal_lm(hf);
    const auto& layer = model->model->layers[1];
    const std::vector<std::pair<std::string, at::Tensor>> norms = {
        {"blk.1.attn_q_norm.weight", layer->self_attn->q_norm->weight()},
        {"blk.1.attn_k_norm.weight", layer->self_attn->k_norm->weight()},
        {"blk.1.post_attention_norm.weight", layer->post_attention_layernorm->weight()},
        {"blk.1.ffn_norm.weight", layer->pre_feedforward_layernorm->weight()},
        {"output_norm.weight", model->model->norm->weight()}};
    for (const auto& [name, w] : norms) {
      EXPECT_TRUE(at::equal(file.read_tensor(name).to(at::kFloat), w.to(at::kFloat) + 1.0)) << name;
    }
    const CheckpointReader reader = CheckpointReader::open_dir(hf);
    EXPECT_TRUE(at::equal(file.read_tensor("blk.1.attn_q.weight"),
                          reader.tensor("model.layers.1.self_attn.q_proj.weight").to(at::kFloat)));
  }
}

// Each refusal names config.json and the field llama.cpp's gemma3 graph has no room for.
TEST(GgufFamilies, Gemma3ConfigsLlamaCppCannotExpressAreRefused) {
  t::ScratchDir scratch("qtrain-gguf-gemma3-refusals");
  const std::string hf = write_gemma3(scratch.file("hf"));
  const std::string good = t::read_file(hf + "/config.json");
  const std::vector<std::pair<std::string, std::function<void(json&)>>> cases = {
      // head_dim 16: llama.cpp scales by 16^-0.5 whatever the config says.
      {"query_pre_attn_scalar", [](json& j) { j["query_pre_attn_scalar"] = 64; }},
      {"rope_parameters",
       [](json& j) {
         j["rope_parameters"]["sliding_attention"] = {
             {"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 1e4}};
       }},
      {"sliding_window", [](json& j) { j["sliding_window"] = nullptr; }},
      {"attention_bias", [](json& j) { j["attention_bias"] = true; }},
      {"hidden_activation",
       [](json& j) {
         j["hidden_activation"] = "silu";
         j["hidden_act"] = "silu";
       }},
  };
  for (const auto& [field, edit] : cases) {
    SCOPED_TRACE(field);
    t::write_file(hf + "/config.json", good);
    edit_config(hf, edit);
    try {
      export_gguf(hf, scratch.file("out.gguf"));
      ADD_FAILURE() << "exported";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
      EXPECT_EQ(e.context().field, field) << e.what();
      EXPECT_EQ(e.context().file, hf + "/config.json");
      EXPECT_NE(e.message().find("GGUF export of gemma3_text: "), std::string::npos) << e.what();
    }
  }
  // Without a window, sliding layers that rotate like the full ones export (llama.cpp: no SWA).
  t::write_file(hf + "/config.json", good);
  edit_config(hf, [](json& j) {
    j["sliding_window"] = nullptr;
    j["rope_local_base_freq"] = 1e6;
    j["rope_parameters"]["sliding_attention"]["rope_theta"] = 1e6;
  });
  export_gguf(hf, scratch.file("no-window.gguf"));
  const GgufReader file = GgufReader::open(scratch.file("no-window.gguf"));
  EXPECT_FALSE(file.find("gemma3.attention.sliding_window"));
  EXPECT_FALSE(file.find("gemma3.attention.sliding_window_pattern"));
}

// llama.cpp's logits for both models, F32 and F16, against qtrain's float32 forward.
TEST(GgufFamilies, Gemma3ExportsRunInLlamaCppWithQtrainsLogits) {
  QTRAIN_REQUIRE_LLAMA_CPP();
  t::ScratchDir scratch("qtrain-gguf-gemma3");
  for (const bool scaled : {false, true}) {
    const std::string name = scaled ? "scaled" : "qtiny";
    SCOPED_TRACE(name);
    const std::string hf =
        scaled ? write_gemma3_scaled(scratch.file(name)) : write_gemma3(scratch.file(name));
    const SentencePieceTokenizer spm = SentencePieceTokenizer::load(hf + "/tokenizer.model");
    const std::string license = t::read_file("/usr/share/common-licenses/GPL-3");
    std::vector<int64_t> ids = spm.encode(license, true, false);
    ids.resize(128);
    const std::string ids_path = scratch.file(name + "-ids.json");
    t::write_file(ids_path, json(ids).dump());

    auto model = load_causal_lm(hf);  // float32 compute over the float16 checkpoint
    model->eval();
    at::Tensor ours;
    {
      at::NoGradGuard no_grad;
      ours = model->forward({.input_ids = at::tensor(ids, at::kLong).unsqueeze(0)})[0];
    }
    for (const GgufOutType outtype : {GgufOutType::kF32, GgufOutType::kF16}) {
      const std::string path = scratch.file(name + "-" + gguf_outtype_name(outtype) + ".gguf");
      export_gguf(hf, path, {.outtype = outtype});
      const json r = llama_cpp({"eval", path, ids_path});
      ASSERT_TRUE(r.contains("logits"));
      const at::Tensor theirs = logits_of(r);
      ASSERT_EQ(theirs.sizes(), ours.sizes());
      const double diff = t::max_abs_diff(theirs, ours);
      std::cout << "[ llama.cpp ] gemma3 " << name << " " << gguf_outtype_name(outtype)
                << ": max |logit diff| vs qtrain = " << diff << " (max |logit| "
                << ours.abs().max().item<float>() << ")\n";
      // ggml's GELU reads a float16 table (its input rounded to float16), so even F32 files
      // differ at 1e-3, more with depth; F16 files also round the matmuls' activations. Measured:
      // qtiny F32 1.6e-3, F16 4.0e-3 (max |logit| 13.9); scaled F32 4.8e-3, F16 8.1e-3 (8.4).
      // Each key matters by far more: llama.cpp's logits move by >= 1.07 when freq_base_swa,
      // the scaling factor, the soft cap or the window is overridden, and a window of 15 or 17
      // instead of 16 moves transformers' by >= 1.98.
      EXPECT_LE(diff, outtype == GgufOutType::kF32 ? 1e-2 : 2e-2);
    }
  }
}

// `proto` (a tokenizer.model) with NormalizerSpec.add_dummy_prefix (ModelProto field 3, its field
// 3) set to false in place, as Gemma's tokenizers have it.
std::string without_dummy_prefix(std::string proto) {
  auto varint = [&proto](size_t& at) {
    uint64_t value = 0;
    for (int shift = 0;; shift += 7) {
      const auto byte = static_cast<uint8_t>(proto.at(at++));
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return value;
    }
  };
  // Skips a field's value of wire type `wire` (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
  auto skip = [&](size_t& at, uint64_t wire) {
    if (wire == 0) varint(at);
    if (wire == 1) at += 8;
    if (wire == 2) at += varint(at);
    if (wire == 5) at += 4;
  };
  for (size_t at = 0; at < proto.size();) {
    const uint64_t key = varint(at);
    if (key != (3 << 3 | 2)) {
      skip(at, key & 7);
      continue;
    }
    const size_t end = at + varint(at);
    for (size_t in = at; in < end;) {
      const uint64_t inner = varint(in);
      if (inner == (3 << 3 | 0)) {
        proto[in] = 0;  // one varint byte: 1 -> 0
        return proto;
      }
      skip(in, inner & 7);
    }
    break;
  }
  ADD_FAILURE() << "no add_dummy_prefix in the NormalizerSpec";
  return proto;
}

// `proto` (a tokenizer.model) with its last piece replaced by `piece`, a user-defined piece (type
// 4) as Gemma's <start_of_turn> is. Piece entries are ModelProto's field 1 (piece 1, score 2,
// type 3); a repeated field's entries are independent, so one is re-encoded in place.
std::string with_last_piece_user_defined(const std::string& proto, const std::string& piece) {
  auto varint = [&proto](size_t& at) {
    uint64_t value = 0;
    for (int shift = 0;; shift += 7) {
      const auto byte = static_cast<uint8_t>(proto.at(at++));
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return value;
    }
  };
  size_t last_begin = 0, last_end = 0;
  for (size_t at = 0; at < proto.size();) {
    const size_t begin = at;
    const uint64_t key = varint(at);
    const uint64_t wire = key & 7;
    if (wire == 0) varint(at);
    if (wire == 1) at += 8;
    if (wire == 2) at += varint(at);
    if (wire == 5) at += 4;
    if (key == (1 << 3 | 2)) last_begin = begin, last_end = at;
  }
  EXPECT_LT(piece.size() + 9, 128u);  // one-byte lengths
  std::string entry = std::string("\x0a") + static_cast<char>(piece.size()) + piece;
  entry += std::string("\x15\0\0\0\0", 5) + "\x18\x04";  // score 0, USER_DEFINED
  return proto.substr(0, last_begin) + "\x0a" + static_cast<char>(entry.size()) + entry +
         proto.substr(last_end);
}

// llama.cpp tokenizes license text as qtrain's SentencePiece model does, with the space prefix
// (qtiny's tokenizer, Llama's) and without (Gemma's: the export says add_space_prefix false), and
// reads a user-defined piece that tokenizer_config.json lists as special (Gemma's <start_of_turn>)
// as one control token.
TEST(GgufFamilies, Gemma3ExportsTokenizeInLlamaCppAsQtrain) {
  QTRAIN_REQUIRE_LLAMA_CPP();
  t::ScratchDir scratch("qtrain-gguf-gemma3-tokens");
  const std::string license = t::read_file("/usr/share/common-licenses/GPL-3");
  const std::vector<std::string> texts = {
      license.substr(0, 2000),
      license.substr(20000, 1500),
      t::read_file("/usr/share/common-licenses/Apache-2.0").substr(0, 1500),
      "  two leading spaces,  double  spaces\n\nand 2024 digits 3.14159",
      "a",
      "<start_of_turn>",
      "<start_of_turn>user\nWrite a license<start_of_turn>model\n"};
  const std::string texts_path = write_json(scratch.file("texts.json"), json(texts));
  for (const bool prefix : {true, false}) {
    SCOPED_TRACE(prefix ? "add_dummy_prefix" : "no dummy prefix");
    const std::string name = prefix ? "prefix" : "no-prefix";
    const std::string hf = write_gemma3(scratch.file(name));
    std::string proto =
        with_last_piece_user_defined(t::read_file(hf + "/tokenizer.model"), "<start_of_turn>");
    if (!prefix) proto = without_dummy_prefix(proto);
    t::write_file(hf + "/tokenizer.model", proto);
    const SentencePieceTokenizer spm = SentencePieceTokenizer::load(hf + "/tokenizer.model");
    const int64_t turn = spm.vocab_size() - 1;
    ASSERT_EQ(spm.piece(turn), "<start_of_turn>");
    ASSERT_FALSE(spm.is_control(turn));
    edit_tokenizer_config(hf, [turn](json& j) {
      j["added_tokens_decoder"][std::to_string(turn)] = {{"content", "<start_of_turn>"},
                                                         {"special", true},
                                                         {"lstrip", false},
                                                         {"rstrip", false},
                                                         {"normalized", false},
                                                         {"single_word", false}};
    });
    EXPECT_EQ(spm.piece(spm.encode("a").at(0)).rfind("\xe2\x96\x81", 0) == 0, prefix);
    const std::string path = scratch.file(name + ".gguf");
    export_gguf(hf, path, {.outtype = GgufOutType::kF16});
    const GgufReader file = GgufReader::open(path);
    EXPECT_EQ(file.find("tokenizer.ggml.token_type")->items.at(turn).i, 3);  // control
    const GgufValue* add_space = file.find("tokenizer.ggml.add_space_prefix");
    if (prefix) {
      EXPECT_FALSE(add_space);  // llama.cpp's default: true
    } else {
      ASSERT_TRUE(add_space);
      EXPECT_EQ(add_space->u, 0u);
    }
    const json tok = llama_cpp({"tokenize", path, texts_path});
    ASSERT_TRUE(tok.contains("ids"));
    ASSERT_EQ(tok["ids"].size(), texts.size());
    // With a dummy prefix SentencePiece also puts "\u2581" before a user-defined piece and the
    // text after it, llama.cpp does not (nor does it for Llama's <s> in text): only prefix-free
    // models, Gemma's, tokenize such text alike.
    const size_t compared = prefix ? 5 : texts.size();
    for (size_t i = 0; i < compared; ++i) {
      EXPECT_EQ(tok["ids"][i].get<std::vector<int64_t>>(), spm.encode(texts[i], false, false))
          << "text " << i;
    }
    EXPECT_EQ(tok["ids"][5].get<std::vector<int64_t>>(), std::vector<int64_t>{turn});
  }
}

}  // namespace
}  // namespace qtrain

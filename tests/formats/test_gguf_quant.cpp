// Quantized GGUF: the block encoders (Q8_0, Q4_0, Q5_0, Q4_K, Q6_K) and llama.cpp's per-tensor
// type mix.
//
// The encoders are checked three ways on rows with edge cases (all-zero blocks, exact .5 ties,
// constant and one-spike blocks, a range of magnitudes): decoded here with the formats.md §7.5
// formulas, the reconstruction must equal gguf-py's dequantize exactly and stay within each type's
// error bound; the bytes must equal gguf-py's numpy quantizer (block-32 types) and ggml's own
// quantizer from llama-cpp-python's libggml-base (all types; skipped without llama_cpp unless
// QTRAIN_REQUIRE_INTEROP=1).
#include "core/error.h"
#include "formats/gguf/gguf_mix.h"
#include "formats/gguf/gguf_types.h"
#include "quant/ggml/ggml_fp16.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>

namespace qtrain {
namespace {

using nlohmann::json;
using testing::ScratchDir;

uint16_t u16_at(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

float f16_at(const uint8_t* p) {
  return ggml_fp16_value(u16_at(p));
}

// Reconstruction of one block of each type, written from formats.md §7.5 (not from the encoder).
void decode_block(GgmlType type, const uint8_t* b, float* y) {
  switch (type) {
    case GgmlType::kQ8_0:
      for (int j = 0; j < 32; ++j) y[j] = static_cast<int8_t>(b[2 + j]) * f16_at(b);
      return;
    case GgmlType::kQ4_0:
      for (int j = 0; j < 16; ++j) {
        y[j] = ((b[2 + j] & 0xF) - 8) * f16_at(b);
        y[j + 16] = ((b[2 + j] >> 4) - 8) * f16_at(b);
      }
      return;
    case GgmlType::kQ5_0: {
      uint32_t qh;
      std::memcpy(&qh, b + 2, 4);
      for (int j = 0; j < 16; ++j) {
        const int q0 = (b[6 + j] & 0xF) | (((qh >> j) & 1) << 4);
        const int q1 = (b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
        y[j] = (q0 - 16) * f16_at(b);
        y[j + 16] = (q1 - 16) * f16_at(b);
      }
      return;
    }
    case GgmlType::kQ4_K: {
      const float d = f16_at(b), dmin = f16_at(b + 2);
      const uint8_t* s = b + 4;
      const uint8_t* qs = b + 16;
      for (int j = 0; j < 8; ++j) {
        const int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        const int m = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        for (int l = 0; l < 32; ++l) {
          const uint8_t byte = qs[32 * (j / 2) + l];
          const int q = j % 2 == 0 ? byte & 0xF : byte >> 4;
          y[32 * j + l] = d * sc * q - dmin * m;
        }
      }
      return;
    }
    case GgmlType::kQ6_K: {
      const float d = f16_at(b + 208);
      for (int h = 0; h < 2; ++h) {
        const uint8_t* ql = b + 64 * h;
        const uint8_t* qh = b + 128 + 32 * h;
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * h;
        float* yh = y + 128 * h;
        for (int l = 0; l < 32; ++l) {
          const int is = l / 16;
          const int q1 = (ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4);
          const int q2 = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
          const int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
          const int q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
          yh[l] = d * sc[is + 0] * (q1 - 32);
          yh[l + 32] = d * sc[is + 2] * (q2 - 32);
          yh[l + 64] = d * sc[is + 4] * (q3 - 32);
          yh[l + 96] = d * sc[is + 6] * (q4 - 32);
        }
      }
      return;
    }
    default:
      FAIL() << "no decoder for " << ggml_type_name(type);
  }
}

// rows [n, cols] -> (bytes, reconstruction [n, cols]).
std::pair<std::vector<uint8_t>, at::Tensor> encode_and_decode(GgmlType type, const at::Tensor& x) {
  const GgmlTypeTraits& t = ggml_type_traits(type);
  std::vector<uint8_t> bytes(ggml_nbytes(type, {x.size(1), x.size(0)}));
  ggml_encode_rows(type, x, bytes.data());
  at::Tensor y = at::empty_like(x);
  const int64_t blocks = x.numel() / t.block_elems;
  for (int64_t i = 0; i < blocks; ++i) {
    decode_block(type, bytes.data() + i * t.block_bytes, y.data_ptr<float>() + i * t.block_elems);
  }
  return {bytes, y};
}

// Rows of 512 that cover the edge cases; every row is a whole number of Q4_K/Q6_K blocks.
at::Tensor test_rows() {
  at::manual_seed(11);
  const int64_t cols = 512;
  std::vector<at::Tensor> rows;
  rows.push_back(at::randn({cols}));                // normal
  rows.push_back(at::rand({cols}) * 2 - 1);         // uniform
  rows.push_back(at::randn({cols}).pow(3));         // heavy tails
  rows.push_back(at::randn({cols}) * 1e-3 + 0.01);  // small, one-signed
  rows.push_back(at::randn({cols}) * 300);          // large
  rows.push_back(at::zeros({cols}));                // all zero
  rows.push_back(at::full({cols}, -0.75));          // constant
  at::Tensor spike = at::zeros({cols});
  spike[5] = 3.0;
  spike[300] = -2.0;
  rows.push_back(spike);  // one value per block
  // Ties: integers with amax 127 make Q8_0's x/d land on .0; halves on .5 (half away from zero).
  rows.push_back((at::randint(-127, 128, {cols}) + 0.5)
                     .clamp(-126.5, 126.5)
                     .index_put_({at::arange(0, cols, 32)}, at::full({cols / 32}, 127.0)));
  rows.push_back(at::randint(-8, 8, {cols}).to(at::kFloat));  // Q4_0 grid values
  at::Tensor mixed = at::randn({cols});
  mixed.slice(0, 0, 64).zero_();        // zero sub-blocks
  mixed.slice(0, 256, 272).fill_(1.5);  // a constant sub-block
  rows.push_back(mixed);
  rows.push_back(at::randn({cols}).abs());   // non-negative
  rows.push_back(-at::randn({cols}).abs());  // non-positive
  return at::stack(rows).to(at::kFloat).contiguous();
}

void write_raw(const std::string& path, const void* data, size_t n) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

bool require_interop() {
  const char* r = std::getenv("QTRAIN_REQUIRE_INTEROP");
  return r && std::string(r) == "1";
}

TEST(GgufQuantTest, NearestIntRoundsHalfToEven) {
  EXPECT_EQ(ggml_nearest_int(0.5f), 0);
  EXPECT_EQ(ggml_nearest_int(1.5f), 2);
  EXPECT_EQ(ggml_nearest_int(2.5f), 2);
  EXPECT_EQ(ggml_nearest_int(-0.5f), 0);
  EXPECT_EQ(ggml_nearest_int(-1.5f), -2);
  EXPECT_EQ(ggml_nearest_int(-2.49f), -2);
  EXPECT_EQ(ggml_nearest_int(31.7f), 32);
}

TEST(GgufQuantTest, Q8_0HandWorkedBlock) {
  // amax 127 -> d = 1: q = round(x), halves away from zero.
  at::Tensor x = at::zeros({1, 32});
  x[0][0] = 127;
  x[0][1] = 2.5;
  x[0][2] = -2.5;
  x[0][3] = 0.49f;
  auto [bytes, y] = encode_and_decode(GgmlType::kQ8_0, x);
  ASSERT_EQ(bytes.size(), 34u);
  EXPECT_EQ(u16_at(bytes.data()), 0x3C00);  // 1.0
  EXPECT_EQ(static_cast<int8_t>(bytes[2]), 127);
  EXPECT_EQ(static_cast<int8_t>(bytes[3]), 3);
  EXPECT_EQ(static_cast<int8_t>(bytes[4]), -3);
  EXPECT_EQ(static_cast<int8_t>(bytes[5]), 0);
}

TEST(GgufQuantTest, Q4_0HandWorkedBlock) {
  // max = -8 -> d = 1; q = min(15, trunc(x + 8.5)); qs[j] = q[j] | q[j+16] << 4.
  at::Tensor x = at::zeros({1, 32});
  x[0][0] = -8;
  x[0][1] = 7.5;    // 16 -> clipped to 15
  x[0][16] = 3;     // 11
  x[0][17] = -0.5;  // trunc(8.0) = 8
  auto [bytes, y] = encode_and_decode(GgmlType::kQ4_0, x);
  ASSERT_EQ(bytes.size(), 18u);
  EXPECT_EQ(u16_at(bytes.data()), 0x3C00);
  EXPECT_EQ(bytes[2], 0x0 | (11 << 4));
  EXPECT_EQ(bytes[3], 15 | (8 << 4));
  EXPECT_EQ(bytes[4], 8 | (8 << 4));
}

TEST(GgufQuantTest, ZeroBlocksEncodeToZeroBytes) {
  for (GgmlType type :
       {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_0, GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    auto [bytes, y] = encode_and_decode(type, at::zeros({2, 256}));
    EXPECT_TRUE(y.eq(0).all().item<bool>()) << ggml_type_name(type);
    if (type == GgmlType::kQ8_0 || type == GgmlType::kQ4_K || type == GgmlType::kQ6_K) {
      for (uint8_t b : bytes) ASSERT_EQ(b, 0) << ggml_type_name(type);
    }
  }
}

TEST(GgufQuantTest, EncodingIsTheSameInParallelAndPerRow) {
  at::Tensor x = test_rows();
  for (GgmlType type : {GgmlType::kQ4_K, GgmlType::kQ6_K, GgmlType::kQ4_0}) {
    auto [all, y] = encode_and_decode(type, x);
    const int64_t row_bytes = static_cast<int64_t>(all.size()) / x.size(0);
    for (int64_t r = 0; r < x.size(0); ++r) {
      auto [one, y1] = encode_and_decode(type, x.slice(0, r, r + 1).contiguous());
      ASSERT_EQ(0, std::memcmp(one.data(), all.data() + r * row_bytes, row_bytes))
          << ggml_type_name(type) << " row " << r;
    }
  }
}

// Worst error of a block relative to its largest |x|, with the reasons:
//   Q8_0: d/2 = amax/254, plus the fp16 rounding of d (2^-11 relative) times |q| <= 127;
//   Q4_0 / Q5_0: the value opposite the signed max lands one step past the grid: up to d =
//     amax/8 (amax/16);
//   Q4_K: 4-bit steps over [min, max] of a 32-value sub-block (<= 2 amax / 15 wide, error half a
//     step), loosened for the 6-bit quantized scales and mins;
//   Q6_K: 6-bit steps of amax_sub/32 or less, error half a step plus the 8-bit scale rounding.
double relative_bound(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
      return 0.5 / 127 + 127.0 / 127 * 0.00049;
    case GgmlType::kQ4_0:
      return 1.0 / 8 * 1.001;
    case GgmlType::kQ5_0:
      return 1.0 / 16 * 1.001;
    case GgmlType::kQ4_K:
      return 0.12;
    case GgmlType::kQ6_K:
      return 0.025;
    default:
      return 0;
  }
}

TEST(GgufQuantTest, MatchesGgufPyAndGgml) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir;
  const at::Tensor x = test_rows();
  const std::vector<GgmlType> types = {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_0,
                                       GgmlType::kQ4_K, GgmlType::kQ6_K};
  json meta = {{"rows", x.size(0)}, {"cols", x.size(1)}, {"types", json::array()}};
  write_raw(dir.file("x.f32"), x.data_ptr<float>(), x.numel() * sizeof(float));
  for (GgmlType type : types) {
    auto [bytes, y] = encode_and_decode(type, x);
    const std::string name = ggml_type_name(type);
    meta["types"].push_back(name);
    write_raw(dir.file(name + ".bin"), bytes.data(), bytes.size());
    write_raw(dir.file(name + ".deq.f32"), y.data_ptr<float>(), y.numel() * sizeof(float));
  }
  testing::write_file(dir.file("meta.json"), meta.dump());

  std::string output;
  const int rc = testing::run_reference_script("gguf_quants.py", {dir.path()}, &output);
  ASSERT_EQ(rc, 0) << output;
  const json r = json::parse(output.substr(output.find('{')));
  bool ggml_missing = false;
  for (GgmlType type : types) {
    const std::string name = ggml_type_name(type);
    const json& t = r.at(name);
    SCOPED_TRACE(name + ": " + t.dump());
    if (!t["gguf_py_bytes_equal"].is_null()) {
      EXPECT_TRUE(t["gguf_py_bytes_equal"].get<bool>());
    }
    EXPECT_TRUE(t["dequant_equal"].get<bool>());
    EXPECT_TRUE(t["zero_blocks_exact"].get<bool>());
    EXPECT_LE(t["max_rel_err_block"].get<double>(), relative_bound(type));
    std::cout << "[ gguf ] " << name << ": max block-relative error "
              << t["max_rel_err_block"].get<double>()
              << ", bytes == ggml: " << t["ggml_bytes_equal"] << "\n";
    if (t["ggml_bytes_equal"].is_null()) {
      ggml_missing = true;
    } else {
      EXPECT_TRUE(t["ggml_bytes_equal"].get<bool>());
    }
  }
  if (ggml_missing) {
    if (require_interop()) FAIL() << "llama_cpp missing from the reference venv";
    GTEST_SKIP() << "llama_cpp not installed: bytes not compared with ggml's quantizer";
  }
}

// ---------------------------------------------------------------------------------------------
// The type mix.

GgufMixTensor tensor(const std::string& name, int64_t ne0, int64_t layer = -1,
                     int64_t n_layers = 32, bool tied = false) {
  return {
      .name = name, .n_dims = 2, .ne0 = ne0, .layer = layer, .n_layers = n_layers, .tied = tied};
}

TEST(GgufMixTest, NamesAndFileTypes) {
  EXPECT_EQ(parse_gguf_outtype("q4_k_m"), GgufOutType::kQ4_K_M);
  EXPECT_EQ(parse_gguf_outtype("Q8_0"), GgufOutType::kQ8_0);
  EXPECT_EQ(gguf_outtype_name(GgufOutType::kQ4_0), "Q4_0");
  EXPECT_THROW(parse_gguf_outtype("q3_k"), Error);
  EXPECT_EQ(gguf_file_type(GgufOutType::kF32), 0u);
  EXPECT_EQ(gguf_file_type(GgufOutType::kF16), 1u);
  EXPECT_EQ(gguf_file_type(GgufOutType::kQ4_0), 2u);
  EXPECT_EQ(gguf_file_type(GgufOutType::kQ8_0), 7u);
  EXPECT_EQ(gguf_file_type(GgufOutType::kQ4_K_M), 15u);
}

TEST(GgufMixTest, OneDimensionalTensorsStayF32) {
  GgufMixTensor norm = tensor("blk.0.attn_norm.weight", 4096, 0);
  norm.n_dims = 1;
  for (GgufOutType o : {GgufOutType::kF16, GgufOutType::kQ8_0, GgufOutType::kQ4_K_M}) {
    EXPECT_EQ(gguf_tensor_type(o, norm), GgmlType::kF32);
  }
}

TEST(GgufMixTest, Q4KMUsesMoreBitsOnTheLayersLlamaCppPicks) {
  // use_more_bits(i, 32): i < 4, i >= 28, or (i - 4) % 3 == 2.
  std::vector<int64_t> more;
  for (int64_t i = 0; i < 32; ++i) {
    const GgmlType v = gguf_tensor_type(
        GgufOutType::kQ4_K_M, tensor("blk." + std::to_string(i) + ".attn_v.weight", 4096, i));
    const GgmlType down = gguf_tensor_type(
        GgufOutType::kQ4_K_M, tensor("blk." + std::to_string(i) + ".ffn_down.weight", 14336, i));
    EXPECT_EQ(v, down) << i;
    if (v == GgmlType::kQ6_K)
      more.push_back(i);
    else
      EXPECT_EQ(v, GgmlType::kQ4_K) << i;
  }
  EXPECT_EQ(more, (std::vector<int64_t>{0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}));
  for (const char* name : {"blk.6.attn_q.weight", "blk.6.attn_k.weight", "blk.6.attn_output.weight",
                           "blk.6.ffn_gate.weight", "blk.6.ffn_up.weight", "token_embd.weight"}) {
    EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_K_M, tensor(name, 4096, 6)), GgmlType::kQ4_K)
        << name;
  }
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_K_M, tensor("output.weight", 4096)), GgmlType::kQ6_K);
  // Two layers: use_more_bits(i, 2) holds for both.
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_K_M, tensor("blk.1.attn_v.weight", 256, 1, 2)),
            GgmlType::kQ6_K);
}

TEST(GgufMixTest, OutputAndTiedEmbeddings) {
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_0, tensor("output.weight", 4096)), GgmlType::kQ6_K);
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_0, tensor("token_embd.weight", 4096)),
            GgmlType::kQ4_0);
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_0, tensor("token_embd.weight", 4096, -1, 32, true)),
            GgmlType::kQ6_K);
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ8_0, tensor("output.weight", 4096)), GgmlType::kQ8_0);
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kF16, tensor("output.weight", 4096)), GgmlType::kF16);
}

TEST(GgufMixTest, ShapesThatDoNotFitFallBack) {
  // Q6_K output with ne0 = 64 -> Q8_0; Q4_K_M's output check uses Q4_K's block: Q8_0 directly.
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_0, tensor("output.weight", 64)), GgmlType::kQ8_0);
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_K_M, tensor("output.weight", 64)), GgmlType::kQ8_0);
  // Q4_K -> Q5_0, Q6_K -> Q8_0, and F16 when even 32 does not divide ne0.
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_K_M, tensor("blk.0.attn_q.weight", 96, 0)),
            GgmlType::kQ5_0);
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_K_M, tensor("blk.0.attn_v.weight", 96, 0)),
            GgmlType::kQ8_0);
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_K_M, tensor("blk.0.attn_q.weight", 48, 0)),
            GgmlType::kF16);
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ8_0, tensor("blk.0.attn_q.weight", 48, 0)),
            GgmlType::kF16);
  EXPECT_EQ(gguf_tensor_type(GgufOutType::kQ4_0, tensor("output.weight", 48)), GgmlType::kF16);
}

}  // namespace
}  // namespace qtrain

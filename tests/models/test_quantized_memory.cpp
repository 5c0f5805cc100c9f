// Bytes of a quantized Llama-2-7B-shaped model against hand arithmetic.
#include "models/quantized_memory.h"

#include "core/error.h"

#include <gtest/gtest.h>

namespace qtrain {
namespace {

ModelConfig llama2_7b() {
  ModelConfig c;
  c.vocab_size = 32000;
  c.hidden_size = 4096;
  c.intermediate_size = 11008;
  c.num_hidden_layers = 32;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 32;
  c.head_dim = 128;
  return c;
}

// NF4 bytes of an [out, in] weight at blocksize 64: n/2 codes + float absmax per block + table.
int64_t nf4(int64_t out, int64_t in) {
  return out * in / 2 + 4 * (out * in / 64) + 16 * 4;
}
// With double quant: a byte per block, a float per 256 blocks, the offset, both tables.
int64_t nf4_dq(int64_t out, int64_t in) {
  const int64_t blocks = out * in / 64;
  return out * in / 2 + blocks + 4 * ((blocks + 255) / 256) + 4 + 16 * 4 + 256 * 4;
}

const int64_t kLayerParams = 4 * 4096LL * 4096 + 3 * 4096LL * 11008;     // q k v o, gate up down
const int64_t kDenseParams = 2 * 32000LL * 4096 + 32 * 2 * 4096 + 4096;  // embed, lm_head, norms

TEST(QuantizedModelBytesTest, Llama2_7bNf4) {
  const ModelBytes b = quantized_model_bytes(llama2_7b(), {QuantType::kNF4, 64, false});
  EXPECT_EQ(b.quantized_params, 32 * kLayerParams);
  EXPECT_EQ(b.unquantized_params, kDenseParams);
  EXPECT_EQ(b.quantized_params + b.unquantized_params, 6738415616LL);  // Llama-2-7B
  EXPECT_EQ(b.quantized, 32 * (4 * nf4(4096, 4096) + 3 * nf4(11008, 4096)));
  EXPECT_EQ(b.quantized, 3642767360LL);
  EXPECT_EQ(b.unquantized, 2 * kDenseParams);  // BF16
  EXPECT_EQ(b.total(), 4167587840LL);
}

TEST(QuantizedModelBytesTest, Llama2_7bNf4DoubleQuant) {
  const ModelBytes b = quantized_model_bytes(llama2_7b(), {QuantType::kNF4, 64, true});
  EXPECT_EQ(b.quantized, 32 * (4 * nf4_dq(4096, 4096) + 3 * nf4_dq(11008, 4096)));
  EXPECT_EQ(b.quantized, 3341015936LL);
  EXPECT_EQ(b.total(), 3865836416LL);
}

TEST(QuantizedModelBytesTest, SkipModulesComputeDtypeAndBiases) {
  // Nothing skipped: lm_head is quantized too.
  const ModelBytes all = quantized_model_bytes(llama2_7b(), {QuantType::kNF4, 64, false}, {});
  EXPECT_EQ(all.quantized, 3642767360LL + nf4(32000, 4096));
  EXPECT_EQ(all.unquantized, 2 * (kDenseParams - 32000LL * 4096));
  // down_proj kept dense in float32 as well.
  const ModelBytes skip = quantized_model_bytes(llama2_7b(), {QuantType::kNF4, 64, false},
                                                {"lm_head", "mlp.down_proj"}, at::kFloat);
  EXPECT_EQ(skip.quantized, 32 * (4 * nf4(4096, 4096) + 2 * nf4(11008, 4096)));
  EXPECT_EQ(skip.unquantized, 4 * (kDenseParams + 32 * 4096LL * 11008));
  // qwen2: q/k/v biases stay dense.
  ModelConfig qwen = llama2_7b();
  qwen.model_type = "qwen2";
  const ModelBytes q = quantized_model_bytes(qwen, {QuantType::kNF4, 64, false});
  EXPECT_EQ(q.unquantized_params, kDenseParams + 32 * 3 * 4096);
  // tied embeddings: there is no lm_head at all.
  ModelConfig tied = llama2_7b();
  tied.tie_word_embeddings = true;
  EXPECT_EQ(quantized_model_bytes(tied, {QuantType::kNF4, 64, false}).unquantized_params,
            kDenseParams - 32000LL * 4096);
}

TEST(QuantizedModelBytesTest, InvalidQuantConfigIsAnError) {
  EXPECT_THROW(quantized_model_bytes(llama2_7b(), {QuantType::kInt8, 64, true}), Error);
}

}  // namespace
}  // namespace qtrain

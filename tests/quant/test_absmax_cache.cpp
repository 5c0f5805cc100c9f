// The decoded-absmax cache of double-quantized weights: the values equal a fresh decode, a weight
// and its copies decode once across block_absmax, dequantize and dequantize_rows (counted), a copy
// with other nested tensors or tensors written in place never sees stale values, a gathered
// rebuild (the sharded slot's pattern) refills once the previous one is gone, and to() and CUDA
// weights do not use it.
#include "quant/dequantize_rows.h"
#include "quant/quantized_tensor.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <thread>
#include <vector>

namespace qtrain {
namespace {

QuantizedTensor nested_weight(int64_t rows, int64_t cols, uint64_t seed) {
  at::manual_seed(seed);
  // Scales spread over decades so the nested codes differ block to block.
  const at::Tensor w = at::randn({rows, cols}) * at::rand({rows, 1}) * 0.1;
  QuantizedTensor q = quantize(w, {QuantType::kNF4, 64, true});
  q.absmax_cache = std::make_shared<AbsmaxCache>();  // opted in
  return q;
}

int64_t decodes(const QuantizedTensor& w) {
  return w.absmax_cache->decodes();
}

TEST(AbsmaxCacheTest, EqualsAFreshDecodeAndDecodesOnce) {
  const QuantizedTensor w = nested_weight(48, 96, 1);  // 72 blocks
  EXPECT_EQ(decodes(w), 0);
  const at::Tensor fresh = decode_nested_absmax(*w.nested);
  const at::Tensor first = w.block_absmax();
  EXPECT_TRUE(at::equal(first, fresh));
  EXPECT_EQ(decodes(w), 1);
  EXPECT_TRUE(w.block_absmax().is_same(first));
  EXPECT_TRUE(w.cached_block_absmax().is_same(first));

  // dequantize and dequantize_rows (whole and partial row ranges) read the same cache.
  const at::Tensor dense = w.dequantize(at::kBFloat16);
  const at::Tensor expected =
      dequantize_4bit(w.data, fresh, w.code, w.numel(), w.blocksize, at::kBFloat16).view({48, 96});
  EXPECT_TRUE(at::equal(dense, expected));
  for (auto [begin, end] : std::vector<std::pair<int64_t, int64_t>>{{0, 48}, {5, 17}, {47, 48}}) {
    EXPECT_TRUE(at::equal(dequantize_rows(w, begin, end, at::kBFloat16),
                          expected.narrow(0, begin, end - begin)))
        << begin << ".." << end;
  }
  EXPECT_EQ(decodes(w), 1);

  // Copies share it.
  const QuantizedTensor copy = w;
  EXPECT_EQ(copy.absmax_cache, w.absmax_cache);
  EXPECT_TRUE(copy.block_absmax().is_same(first));
  EXPECT_EQ(decodes(w), 1);
}

TEST(AbsmaxCacheTest, OffByDefault) {
  const QuantizedTensor plain = quantize(at::randn({8, 64}), {QuantType::kNF4, 64, true});
  EXPECT_EQ(plain.absmax_cache, nullptr);
  EXPECT_FALSE(plain.cached_block_absmax().defined());
  EXPECT_TRUE(at::equal(plain.block_absmax(), decode_nested_absmax(*plain.nested)));
  EXPECT_EQ(plain.to(at::kCPU).absmax_cache, nullptr);
}

TEST(AbsmaxCacheTest, NotUsedWithoutNestedState) {
  QuantizedTensor w = quantize(at::randn({8, 64}), {QuantType::kNF4, 64, false});
  w.absmax_cache = std::make_shared<AbsmaxCache>();
  EXPECT_FALSE(w.cached_block_absmax().defined());
  EXPECT_TRUE(w.block_absmax().is_same(w.absmax));
  EXPECT_EQ(decodes(w), 0);
}

TEST(AbsmaxCacheTest, ACopyWithOtherNestedTensorsGetsItsOwnValues) {
  const QuantizedTensor w = nested_weight(16, 64, 2);
  const QuantizedTensor other = nested_weight(16, 64, 3);
  const at::Tensor w_absmax = w.block_absmax().clone();
  QuantizedTensor mixed = w;  // shares w's cache, then takes other's nested state
  mixed.data = other.data;
  mixed.nested = other.nested;
  EXPECT_TRUE(at::equal(mixed.block_absmax(), decode_nested_absmax(*other.nested)));
  EXPECT_FALSE(mixed.cached_block_absmax().defined());  // w is alive: its values stay
  EXPECT_TRUE(at::equal(mixed.dequantize(at::kFloat), other.dequantize(at::kFloat)));
  EXPECT_TRUE(at::equal(dequantize_rows(mixed, 3, 9, at::kFloat),
                        other.dequantize(at::kFloat).narrow(0, 3, 6)));
  EXPECT_TRUE(at::equal(w.block_absmax(), w_absmax));
  EXPECT_EQ(decodes(w), 1);
}

TEST(AbsmaxCacheTest, TensorsWrittenInPlaceAreDecodedAgain) {
  QuantizedTensor w = nested_weight(16, 64, 4);
  const at::Tensor before = w.block_absmax().clone();
  w.nested->codes.narrow(0, 0, 3).fill_(200);  // bumps the version counter
  const at::Tensor after = w.block_absmax();
  EXPECT_TRUE(at::equal(after, decode_nested_absmax(*w.nested)));
  EXPECT_FALSE(at::equal(after, before));
  EXPECT_EQ(decodes(w), 2);
  // Writing into the shared result is caught too.
  w.block_absmax().fill_(-1.0f);
  EXPECT_TRUE(at::equal(w.block_absmax(), decode_nested_absmax(*w.nested)));
  EXPECT_EQ(decodes(w), 3);
}

// The sharded slot keeps a copy of the loaded weight with cleared tensors and rebuilds the weight
// from a gathered buffer each pass: each pass's weight sees its own values, and the shared cache
// refills once the weight that filled it is gone.
TEST(AbsmaxCacheTest, RebuiltWeightsRefillOnceThePreviousIsGone) {
  QuantizedTensor loaded = nested_weight(16, 64, 5);
  const at::Tensor expected = loaded.to(at::kCPU).dequantize(at::kFloat);  // its own cache
  loaded.block_absmax();          // the loader's finiteness check fills the cache
  std::vector<at::Tensor> parts;  // the bytes a gather would bring back
  for (const at::Tensor& t : {loaded.data, loaded.code, loaded.nested->codes, loaded.nested->absmax,
                              loaded.nested->code}) {
    parts.push_back(t.clone());
  }
  QuantizedTensor meta = loaded;
  meta.data = meta.code = at::Tensor();
  meta.nested->codes = meta.nested->absmax = meta.nested->code = at::Tensor();
  loaded = QuantizedTensor();
  auto rebuild = [&] {
    QuantizedTensor w = meta;
    w.data = parts[0].clone();
    w.code = parts[1].clone();
    w.nested->codes = parts[2].clone();
    w.nested->absmax = parts[3].clone();
    w.nested->code = parts[4].clone();
    return w;
  };
  for (int pass = 1; pass <= 3; ++pass) {
    const QuantizedTensor w = rebuild();
    EXPECT_TRUE(at::equal(dequantize_rows(w, 2, 7, at::kFloat), expected.narrow(0, 2, 5)));
    EXPECT_TRUE(at::equal(dequantize_rows(w, 7, 16, at::kFloat), expected.narrow(0, 7, 9)));
    EXPECT_EQ(decodes(meta), 1 + pass) << "one decode per pass";
  }
}

TEST(AbsmaxCacheTest, ConcurrentFirstCallsDecodeOnce) {
  const QuantizedTensor w = nested_weight(64, 256, 6);
  std::vector<at::Tensor> results(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = w.block_absmax(); });
  }
  for (std::thread& t : threads) t.join();
  for (const at::Tensor& r : results) EXPECT_TRUE(r.is_same(results[0]));
  EXPECT_EQ(decodes(w), 1);
}

TEST(AbsmaxCacheTest, ToGivesAFreshCacheAndCudaWeightsDecodeEachCall) {
  const QuantizedTensor w = nested_weight(16, 64, 7);
  w.block_absmax();
  const QuantizedTensor moved = w.to(at::kCPU);
  EXPECT_NE(moved.absmax_cache, w.absmax_cache);
  EXPECT_EQ(decodes(moved), 0);
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const QuantizedTensor gpu = w.to(at::Device(at::kCUDA, 0));
  EXPECT_FALSE(gpu.cached_block_absmax().defined());
  EXPECT_TRUE(at::equal(gpu.block_absmax().cpu(), w.block_absmax()));
  EXPECT_EQ(decodes(gpu), 0);
}

}  // namespace
}  // namespace qtrain

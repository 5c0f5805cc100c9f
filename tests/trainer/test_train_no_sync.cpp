// The micro-batch loop never waits for the device (issue: one sync per optimizer step). On CPU
// there is no device, so this test replaces ATen's CPU kernel of aten::_local_scalar_dense (what
// every .item() runs) with one that counts the calls made while a NoSyncScope is open, then trains
// a few packed, accumulated steps in-process. Any .item() added to the loop fails it.
#include "data/tiny_instruct.h"
#include "tests/support/test_support.h"
#include "trainer/no_sync_scope.h"
#include "trainer/recipe/recipe.h"
#include "trainer/trainer.h"

#include <ATen/ATen.h>
#include <ATen/ops/_local_scalar_dense_native.h>
#include <gtest/gtest.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>

namespace qtrain {
namespace {

std::atomic<int64_t> reads_in_scope{0};

at::Scalar counting_local_scalar_dense(const at::Tensor& self) {
  if (NoSyncScope::active()) ++reads_in_scope;
  return at::native::_local_scalar_dense_cpu(self);
}

TORCH_LIBRARY_IMPL(aten, CPU, m) {
  m.impl("_local_scalar_dense", TORCH_FN(counting_local_scalar_dense));
}

TEST(TrainNoSync, TheCounterSeesAnItemInsideTheScope) {
  const int64_t before = reads_in_scope;
  (void)at::ones({}).item<float>();
  EXPECT_EQ(reads_in_scope, before);
  {
    NoSyncScope scope{c10::Device(c10::kCPU)};
    EXPECT_TRUE(NoSyncScope::active());
    (void)at::ones({2}).sum().item<float>();
  }
  EXPECT_FALSE(NoSyncScope::active());
  EXPECT_EQ(reads_in_scope, before + 1);
}

TEST(TrainNoSync, MicroBatchLoopAndClippingReadNothing) {
  testing::ScratchDir dir;
  const std::string cache = testing::binary_dir() + "/test-cache";
  setenv("QTRAIN_CACHE_DIR", cache.c_str(), 1);
  write_tiny_instruct_dataset(dir.file("data.jsonl"), 48, 3);
  const Recipe recipe = parse_recipe(R"(model:
  path: builtin:micro
  dtype: float32
  device: cpu
adapter:
  r: 4
  dropout: 0.1
data:
  path: )" + dir.file("data.jsonl") + R"(
  max_seq_len: 128
  packing: true
  eval_fraction: 0
training:
  micro_batch_size: 2
  grad_accum_steps: 3
  max_steps: 3
  loss_chunk_tokens: 16
  max_grad_norm: 0.5
output:
  dir: )" + dir.file("run") + R"(
  tensorboard: false
)",
                                     "no_sync.yaml");
  reads_in_scope = 0;
  const TrainResult result = train(recipe, {});
  EXPECT_EQ(result.steps_done, 3);
  EXPECT_GT(result.last_loss, 0);
  EXPECT_EQ(reads_in_scope, 0) << "the micro-batch loop or the clipping read a device value";
}

}  // namespace
}  // namespace qtrain

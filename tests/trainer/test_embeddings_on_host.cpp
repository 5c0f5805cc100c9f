// The recipe key model.embeddings_on_host: it reaches the model the recipe builds (every loader),
// a tied base is refused naming the key before its weights load, and qtrain trains the identical
// loss curve with it (on the CPU the gather-then-copy path runs, with the same numbers); on CUDA
// the table stays in pinned host memory and the curve matches the device table's, and the loaders
// never put it on the device (the peak of device memory while loading is one table lower).
#include "core/error.h"
#include "data/tiny_instruct.h"
#include "models/llama.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"
#include "trainer/recipe/recipe.h"
#include "trainer/training_model.h"

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <nlohmann/json.hpp>

#ifdef QTRAIN_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace qtrain {
namespace {

std::string cache_dir() {
  return testing::binary_dir() + "/test-cache";
}

class EmbeddingsOnHost : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("QTRAIN_CACHE_DIR", cache_dir().c_str(), 1);
    write_tiny_instruct_dataset(dir_.file("data.jsonl"), 48, 2);
  }

  std::string recipe_yaml(const std::string& path, const std::string& device) const {
    return R"(model:
  path: )" +
           path + R"(
  dtype: float32
  device: )" +
           device + R"(
quantization:
  type: nf4
adapter:
  r: 4
  dtype: float32
data:
  path: )" +
           dir_.file("data.jsonl") + R"(
  max_seq_len: 128
  eval_fraction: 0.25
training:
  micro_batch_size: 4
  max_steps: 3
  eval_every: 3
  seed: 4
)";
  }

  Recipe recipe(const std::string& path, const std::vector<std::string>& overrides,
                const std::string& device = "cpu") const {
    return parse_recipe(recipe_yaml(path, device), "recipe.yaml", overrides);
  }

  // Runs qtrain on the recipe with `overrides`; returns the losses metrics.jsonl records, training
  // and held-out in order.
  std::vector<double> train(const std::string& name, const std::string& device,
                            const std::string& overrides) {
    testing::write_file(dir_.file(name + ".yaml"), recipe_yaml("builtin:micro", device));
    std::string out;
    const int code = testing::run_command(
        "QTRAIN_CACHE_DIR=" + cache_dir() + " " + testing::binary_dir() + "/tools/qtrain " +
            dir_.file(name + ".yaml") + " output.dir=" + dir_.file(name) + " " + overrides,
        &out);
    EXPECT_EQ(code, 0) << out;
    std::ifstream in(dir_.file(name) + "/metrics.jsonl");
    std::vector<double> losses;
    std::string line;
    while (std::getline(in, line)) {
      const auto m = nlohmann::json::parse(line);
      if (m.contains("loss")) losses.push_back(m["loss"].get<double>());
      if (m.contains("eval_loss")) losses.push_back(m["eval_loss"].get<double>());
    }
    return losses;
  }

  testing::ScratchDir dir_{"qtrain-embeddings-on-host"};
};

TEST_F(EmbeddingsOnHost, TheRecipeKeyReachesEveryLoader) {
  for (const std::string type : {"nf4", "none"}) {
    TrainingModel m = build_training_model(
        recipe("builtin:micro", {"model.embeddings_on_host=true", "quantization.type=" + type}));
    EXPECT_TRUE(m.model->embeddings_on_host()) << type;
    TrainingModel off =
        build_training_model(recipe("builtin:micro", {"quantization.type=" + type}));
    EXPECT_FALSE(off.model->embeddings_on_host()) << type;
  }
  TrainingModel int4 = build_training_model(
      recipe("builtin:micro",
             {"model.embeddings_on_host=true", "quantization.type=int4", "adapter.type=qalora"}));
  EXPECT_TRUE(int4.model->embeddings_on_host());
  TrainingModel synthetic = build_training_model(
      recipe("builtin:micro", {"model.embeddings_on_host=true", "model.synthetic=true"}));
  EXPECT_TRUE(synthetic.model->embeddings_on_host());
}

TEST_F(EmbeddingsOnHost, ATiedBaseIsRefusedNamingTheKey) {
  const std::string tied = dir_.file("qwen2");
  write_tiny_model({.arch = "qwen2", .preset = "micro", .seed = 1}, tied);
  for (const std::vector<std::string>& overrides :
       {std::vector<std::string>{"model.embeddings_on_host=true"},
        {"model.embeddings_on_host=true", "quantization.type=none"},
        {"model.embeddings_on_host=true", "quantization.type=int4", "adapter.type=qalora"},
        {"model.embeddings_on_host=true", "model.synthetic=true"}}) {
    try {
      build_training_model(recipe(tied, overrides));
      ADD_FAILURE() << "a tied model was accepted: " << overrides.back();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
      EXPECT_EQ(e.context().field, "model.embeddings_on_host") << e.what();
    }
  }
  EXPECT_NO_THROW(build_training_model(recipe(tied, {})));
}

TEST_F(EmbeddingsOnHost, QtrainTrainsTheSameLossCurve) {
  const std::vector<double> device_table = train("device", "cpu", "");
  const std::vector<double> host_table = train("host", "cpu", "model.embeddings_on_host=true");
  ASSERT_EQ(device_table.size(), 5u);  // eval at 0, 3 training steps, eval at 3
  EXPECT_EQ(device_table, host_table);
}

TEST_F(EmbeddingsOnHost, CudaTableStaysPinnedOnTheHostAndTrainsTheSameCurve) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  TrainingModel m =
      build_training_model(recipe("builtin:micro", {"model.embeddings_on_host=true"}, "cuda"));
  EXPECT_TRUE(m.model->model->embed_tokens.is_cpu());
  EXPECT_TRUE(m.model->model->embed_tokens.is_pinned());
  EXPECT_TRUE(m.model->device().is_cuda());
  const std::vector<double> device_table = train("cuda-device", "cuda", "");
  const std::vector<double> host_table =
      train("cuda-host", "cuda", "model.embeddings_on_host=true");
  ASSERT_EQ(device_table.size(), host_table.size());
  for (size_t i = 0; i < device_table.size(); ++i) {
    EXPECT_NEAR(device_table[i], host_table[i], 1e-4 * device_table[i]) << i;
  }
}

#ifdef QTRAIN_WITH_CUDA
// Peak bytes the caching allocator held on cuda:0 while building `recipe`'s model, and the
// table's bytes. The model is released before returning.
std::pair<int64_t, int64_t> peak_while_building(const Recipe& recipe) {
  using namespace c10::cuda::CUDACachingAllocator;
  const int64_t before = getDeviceStats(0).allocated_bytes[0].current;
  resetPeakStats(0);
  int64_t table_bytes = 0;
  {
    TrainingModel m = build_training_model(recipe);
    table_bytes = static_cast<int64_t>(m.model->model->embed_tokens.nbytes());
  }
  return {getDeviceStats(0).allocated_bytes[0].peak - before, table_bytes};
}
#endif

TEST_F(EmbeddingsOnHost, CudaLoadersNeverPutTheTableOnTheDevice) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
#ifdef QTRAIN_WITH_CUDA
  at::empty({1}, at::TensorOptions().device(at::kCUDA));  // the allocator is initialised
  for (const std::vector<std::string>& overrides :
       {std::vector<std::string>{"quantization.type=int4", "adapter.type=qalora"},
        {"quantization.type=nf4"},
        {"quantization.type=none"}}) {
    SCOPED_TRACE(overrides.front());
    std::vector<std::string> host = overrides;
    host.push_back("model.embeddings_on_host=true");
    const auto [device_peak, table_bytes] =
        peak_while_building(recipe("builtin:micro", overrides, "cuda"));
    const auto [host_peak, host_table_bytes] =
        peak_while_building(recipe("builtin:micro", host, "cuda"));
    EXPECT_EQ(table_bytes, host_table_bytes);
    // Every device allocation but the table is the same either way; moving the table to the host
    // after loading it on the device would leave the peaks equal.
    EXPECT_GE(device_peak - host_peak, table_bytes);
    TrainingModel m = build_training_model(recipe("builtin:micro", host, "cuda"));
    EXPECT_TRUE(m.model->model->embed_tokens.is_cpu());
    EXPECT_TRUE(m.model->model->embed_tokens.is_pinned());
  }
#endif
}

}  // namespace
}  // namespace qtrain

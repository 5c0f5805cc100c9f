// Offloaded checkpointing changes where a layer's input waits for backward, never what backward
// computes: gradients equal the kept-on-device run exactly, every offloaded input comes back, and
// the host holds the inputs of the layers between the first and the last.
#include "models/activation_offload.h"
#include "tests/models/random_model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <map>
#include <string>

namespace qtrain {
namespace {

struct TrainedRun {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;
  int64_t peak_host_bytes = 0;
};

TrainedRun train_once(const c10::Device& device, bool offload, bool simulate, bool packed) {
  ModelConfig c = testing::small_config("llama");
  c.num_hidden_layers = 5;
  auto model = testing::random_model(c, 7);
  model->to(device);
  model->train();
  model->set_gradient_checkpointing(true);
  model->set_activation_offloading(offload, simulate);
  const int64_t batch = 2, length = 12;
  at::Tensor ids = at::randint(c.vocab_size, {batch, length},
                               at::make_generator<at::CPUGeneratorImpl>(3), at::kLong);
  ForwardInputs in{.input_ids = ids.to(device)};
  if (packed) {
    in.cu_seqlens = at::tensor({0, 5, 12, 13, 24}, at::kInt);
    in.position_ids =
        at::cat({at::arange(5), at::arange(7), at::arange(1), at::arange(11)}).view({2, 12});
  }
  at::Tensor logits = model->forward(in);
  at::Tensor loss = logits.to(at::kFloat).logsumexp(-1).mean();
  loss.backward();
  TrainedRun r;
  r.loss = loss.item<double>();
  for (const auto& item : model->named_parameters(true)) {
    if (item.value().grad().defined()) r.grads[item.key()] = item.value().grad().cpu();
  }
  r.peak_host_bytes = model->offloaded_peak_bytes();
  return r;
}

void expect_same(const TrainedRun& a, const TrainedRun& b) {
  EXPECT_EQ(a.loss, b.loss);
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (const auto& [name, grad] : a.grads) {
    ASSERT_TRUE(b.grads.count(name)) << name;
    EXPECT_TRUE(at::equal(grad, b.grads.at(name))) << name;
  }
}

TEST(ActivationOffload, SimulatedOffloadGivesTheSameGradients) {
  for (bool packed : {false, true}) {
    SCOPED_TRACE(packed ? "packed" : "padded");
    const TrainedRun kept = train_once(at::kCPU, false, false, packed);
    const TrainedRun offloaded = train_once(at::kCPU, true, true, packed);
    EXPECT_FALSE(kept.grads.empty());
    expect_same(kept, offloaded);
    // Layers 1..3 of 5 go to the host: three inputs of [2, 12, 32] float32.
    EXPECT_EQ(offloaded.peak_host_bytes, 3 * 2 * 12 * 32 * 4);
    EXPECT_EQ(kept.peak_host_bytes, 0);
  }
}

TEST(ActivationOffload, OnTheCpuWithoutSimulationItIsOff) {
  EXPECT_EQ(ActivationOffloader::create(at::kCPU, false), nullptr);
  const TrainedRun r = train_once(at::kCPU, true, false, false);
  EXPECT_EQ(r.peak_host_bytes, 0);
}

TEST(ActivationOffload, HostCopiesComeBackOnceAndAreCounted) {
  auto offloader = ActivationOffloader::create(at::kCPU, true);
  at::Tensor x = at::arange(6, at::kFloat);
  offloader->offload(1, x);
  offloader->offload(2, x * 2);
  EXPECT_EQ(offloader->host_bytes(), 48);
  EXPECT_TRUE(at::equal(offloader->fetch(2), x * 2));
  EXPECT_TRUE(at::equal(offloader->fetch(1), x));
  EXPECT_EQ(offloader->host_bytes(), 0);
  EXPECT_EQ(offloader->peak_host_bytes(), 48);
  EXPECT_THROW(offloader->fetch(1), std::exception);
}

TEST(ActivationOffload, CudaOffloadGivesTheSameGradients) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (bool packed : {false, true}) {
    SCOPED_TRACE(packed ? "packed" : "padded");
    const TrainedRun kept = train_once(at::Device(at::kCUDA, 0), false, false, packed);
    const TrainedRun offloaded = train_once(at::Device(at::kCUDA, 0), true, false, packed);
    expect_same(kept, offloaded);
    EXPECT_EQ(offloaded.peak_host_bytes, 3 * 2 * 12 * 32 * 4);
  }
}

}  // namespace
}  // namespace qtrain

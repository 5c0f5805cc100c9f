// Loading a train-state checkpoint: the generator states of rng.safetensors are checked as
// set_state will take them (names, dtype, shape, size), so a damaged file is a format error naming
// the file and the tensor instead of LibTorch's own message from deep inside --resume.
#include "core/error.h"
#include "formats/safetensors/safetensors.h"
#include "tests/support/test_support.h"
#include "trainer/train_checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

// A checkpoint whose rng.safetensors holds `rng`, written the way the trainer writes one.
std::string saved_checkpoint(const t::ScratchDir& scratch,
                             const std::map<std::string, at::Tensor>& rng) {
  TrainCheckpoint state;
  state.step = 3;
  state.trainer_state = {{"cursor", {{"epoch", 0}, {"position", 3}}}};
  state.optimizer = {{"step", at::scalar_tensor(3, at::kLong)}};
  state.rng = rng;
  return save_train_checkpoint(
      scratch.path(), state, [](const std::string&) {}, 1);
}

Error load_error(const std::string& dir) {
  try {
    load_train_checkpoint(dir);
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected " << dir << " to be refused";
  return Error(ErrorKind::kInternal, "none");
}

std::map<std::string, at::Tensor> with_cpu_state(
    const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  std::map<std::string, at::Tensor> rng = capture_rng_states(std::nullopt);
  edit(rng);
  return rng;
}

TEST(TrainCheckpoint, GeneratorStatesLoadAsSaved) {
  t::ScratchDir scratch;
  auto rng = with_cpu_state([](auto& states) {
    // Another rank's state, as rank 0 gathers it in a data-parallel run.
    states["rank1/cpu"] = states.at("cpu").clone();
  });
  const TrainCheckpoint loaded = load_train_checkpoint(saved_checkpoint(scratch, rng));
  ASSERT_EQ(loaded.rng.size(), 2u);
  EXPECT_TRUE(at::equal(loaded.rng.at("cpu"), rng.at("cpu")));
  EXPECT_TRUE(at::equal(loaded.rng.at("rank1/cpu"), rng.at("cpu")));
}

TEST(TrainCheckpoint, DamagedGeneratorStatesAreFormatErrorsNamingTheTensor) {
  using States = std::map<std::string, at::Tensor>;
  const std::vector<std::tuple<std::string, std::function<void(States&)>, std::string>> cases = {
      {"cpu", [](States& s) { s["cpu"] = s["cpu"].to(at::kInt); }, "1-D uint8"},
      {"cpu",
       [](States& s) {
         s["cpu"] = s["cpu"].view({1, -1}).clone();
       },
       "1-D uint8"},
      {"cpu", [](States& s) { s["cpu"] = s["cpu"].slice(0, 0, 100).clone(); }, "100 bytes"},
      {"cpx",
       [](States& s) {
         s["cpx"] = s["cpu"];
         s.erase("cpu");
       },
       "not a generator state"},
      {"rank1/gpu", [](States& s) { s["rank1/gpu"] = s["cpu"]; }, "not a generator state"},
      {"cuda:999", [](States& s) { s["cuda:999"] = s["cpu"]; }, "not a generator state"},
      {"", [](States& s) { s.erase("cpu"); }, "no CPU generator state"},
  };
  for (const auto& [tensor, damage, text] : cases) {
    SCOPED_TRACE(tensor + ": " + text);
    t::ScratchDir scratch;
    const std::string dir = saved_checkpoint(scratch, with_cpu_state(damage));
    const Error e = load_error(dir);
    EXPECT_EQ(e.kind(), ErrorKind::kFormat) << e.what();
    EXPECT_EQ(e.context().file, dir + "/rng.safetensors") << e.what();
    EXPECT_EQ(e.context().tensor, tensor) << e.what();
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qtrain

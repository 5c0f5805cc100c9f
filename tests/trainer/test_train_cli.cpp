// `qtrain recipe.yaml` end to end through the real binary on a tiny built-in model: it learns,
// the run directory holds everything it promises, resume continues the identical loss curve,
// SIGTERM leaves a loadable checkpoint, and bad input exits with its code.
#include "data/tiny_instruct.h"
#include "peft/peft_files.h"
#include "tests/support/test_support.h"
#include "trainer/train_checkpoint.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace qtrain {
namespace {
namespace fs = std::filesystem;

std::string qtrain_binary() {
  return testing::binary_dir() + "/tools/qtrain";
}

// One cache for the built-in model across the tests of this binary.
std::string cache_env() {
  return "QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache ";
}

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    write_tiny_instruct_dataset(dir_.file("data.jsonl"), 160, 3);
    testing::write_file(dir_.file("recipe.yaml"), R"(model:
  path: builtin:micro
  dtype: float32
  device: cpu
quantization:
  type: nf4
adapter:
  r: 8
  alpha: 16
  dropout: 0.05
  dtype: float32
data:
  path: )" + dir_.file("data.jsonl") + R"(
  max_seq_len: 128
  eval_fraction: 0.1
training:
  micro_batch_size: 8
  grad_accum_steps: 2
  max_steps: 10
  lr: 3.0e-3
  scheduler: cosine
  warmup_steps: 2
  optimizer: adamw
  eval_every: 5
  seed: 7
output:
  save_every: 5
  keep_last: 2
)");
  }

  // Runs qtrain; returns its exit code and output.
  int run(const std::string& args, std::string* out = nullptr) {
    std::string captured;
    const int code = testing::run_command(
        cache_env() + qtrain_binary() + " " + dir_.file("recipe.yaml") + " " + args, &captured);
    if (out) *out = captured;
    return code;
  }

  std::string run_dir(const std::string& name) { return dir_.file(name); }

  testing::ScratchDir dir_{"qtrain-train-cli"};
};

std::vector<nlohmann::json> read_metrics(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::vector<double> train_losses(const std::vector<nlohmann::json>& metrics) {
  std::vector<double> out;
  for (const auto& m : metrics) {
    if (m.contains("loss")) out.push_back(m["loss"].get<double>());
  }
  return out;
}

std::vector<double> eval_losses(const std::vector<nlohmann::json>& metrics) {
  std::vector<double> out;
  for (const auto& m : metrics) {
    if (m.contains("eval_loss")) out.push_back(m["eval_loss"].get<double>());
  }
  return out;
}

TEST_F(TrainCli, LearnsAndWritesTheRunDirectory) {
  std::string out;
  const std::string dir = run_dir("run");
  ASSERT_EQ(run("output.dir=" + dir, &out), 0) << out;
  EXPECT_NE(out.find("step 10/10 | loss"), std::string::npos) << out;

  const auto metrics = read_metrics(dir);
  const auto losses = train_losses(metrics);
  ASSERT_EQ(losses.size(), 10u);
  EXPECT_LT(losses.back(), losses.front() * 0.9) << "training loss did not fall";
  const auto evals = eval_losses(metrics);
  ASSERT_EQ(evals.size(), 3u);  // before training, step 5, the end
  EXPECT_LT(evals.back(), evals.front()) << "held-out loss did not improve";

  for (const char* file : {"recipe.yaml", "run_info.json", "metrics.jsonl", "checkpoints/latest",
                           "adapter/adapter_config.json", "adapter/adapter_model.safetensors"}) {
    EXPECT_TRUE(fs::exists(dir + "/" + file)) << file;
  }
  bool has_events = false;
  for (const auto& entry : fs::directory_iterator(dir + "/tensorboard")) {
    has_events |= entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  }
  EXPECT_TRUE(has_events);
  const auto info = nlohmann::json::parse(testing::read_file(dir + "/run_info.json"));
  EXPECT_EQ(info["seed"], 7);
  EXPECT_TRUE(info.contains("libtorch_version"));
  // keep_last: 2 -> steps 5 and 10 remain.
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-00000005"));
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-00000010"));
  EXPECT_EQ(testing::read_file(dir + "/checkpoints/latest"), "step-00000010\n");

  // The final adapter is a PEFT adapter directory.
  LoadedAdapter adapter = load_peft_adapter(dir + "/adapter");
  EXPECT_EQ(adapter.config.r, 8);
  EXPECT_EQ(adapter.tensors.size(), 14u);  // 2 layers x 7 projections

  // A second fresh run into the same directory is refused; nothing of the first is touched.
  const std::string before = testing::read_file(dir + "/metrics.jsonl");
  EXPECT_EQ(run("output.dir=" + dir, &out), 3) << out;
  EXPECT_NE(out.find("--resume"), std::string::npos) << out;
  EXPECT_EQ(testing::read_file(dir + "/metrics.jsonl"), before);
}

TEST_F(TrainCli, ResumeContinuesTheIdenticalLossCurve) {
  std::string out;
  const std::string straight = run_dir("straight"), resumed = run_dir("resumed");
  ASSERT_EQ(run("output.dir=" + straight, &out), 0) << out;
  ASSERT_EQ(run("output.dir=" + resumed + " --stop-after 3", &out), 75) << out;
  EXPECT_EQ(testing::read_file(resumed + "/checkpoints/latest"), "step-00000003\n");
  ASSERT_EQ(run("output.dir=" + resumed + " --resume", &out), 0) << out;

  const auto a = read_metrics(straight), b = read_metrics(resumed);
  EXPECT_EQ(train_losses(a), train_losses(b));  // bit-identical, as written
  EXPECT_EQ(eval_losses(a), eval_losses(b));
  ASSERT_EQ(a.size(), b.size());
  const LoadedAdapter x = load_peft_adapter(straight + "/adapter");
  const LoadedAdapter y = load_peft_adapter(resumed + "/adapter");
  for (const auto& [module, tensors] : x.tensors) {
    for (const auto& [name, t] : tensors) {
      EXPECT_TRUE(t.equal(y.tensors.at(module).at(name))) << module << "." << name;
    }
  }
}

TEST_F(TrainCli, SigtermWritesALoadableCheckpoint) {
  const std::string dir = run_dir("sigterm");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string cache = testing::binary_dir() + "/test-cache";
    setenv("QTRAIN_CACHE_DIR", cache.c_str(), 1);
    const std::string recipe = dir_.file("recipe.yaml"), out = "output.dir=" + dir;
    const int fd = ::open("/dev/null", O_WRONLY);
    dup2(fd, 2);
    execl(qtrain_binary().c_str(), "qtrain", recipe.c_str(), out.c_str(), "training.max_steps=400",
          "output.save_every=0", static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait for training to be under way (a few logged steps), then pre-empt it.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  while (train_losses(fs::exists(dir + "/metrics.jsonl") ? read_metrics(dir)
                                                         : std::vector<nlohmann::json>{})
                 .size() < 2 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 75);

  const auto checkpoint = latest_checkpoint(dir);
  ASSERT_TRUE(checkpoint.has_value());
  const TrainCheckpoint state = load_train_checkpoint(*checkpoint);
  EXPECT_GE(state.step, 2);
  EXPECT_LT(state.step, 400);
  EXPECT_FALSE(state.optimizer.empty());
  EXPECT_TRUE(state.rng.count("cpu"));
  EXPECT_EQ(load_peft_adapter(*checkpoint).tensors.size(), 14u);
}

TEST_F(TrainCli, BadInputExitsWithItsCode) {
  struct Case {
    std::string args;
    int code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"training.lerning_rate=1", 2, "training.lerning_rate"},
      {"training.lr", 2, "training.lr"},
      {"training.lr=-1", 3, "training.lr"},
      {"data.path=/nonexistent/data.jsonl", 4, "/nonexistent/data.jsonl"},
      {"model.path=/nonexistent/model", 4, "model.path"},
      {"quantization.type=int4", 3, "qalora"},
      {"model.device=cuda:7", 3, "model.device"},
  };
  for (const auto& c : cases) {
    std::string out;
    EXPECT_EQ(run("output.dir=" + run_dir("bad") + " " + c.args, &out), c.code) << c.args << out;
    EXPECT_NE(out.find(c.says), std::string::npos) << c.args << ": " << out;
    EXPECT_FALSE(fs::exists(run_dir("bad") + "/recipe.yaml")) << c.args << " left a run behind";
  }
  std::string out;
  EXPECT_EQ(testing::run_command(qtrain_binary() + " /nonexistent/recipe.yaml", &out), 4) << out;
  EXPECT_EQ(testing::run_command(qtrain_binary(), &out), 2) << out;
}

// QLoRA's claim: adapters trained on the NF4 base reach the loss of adapters on the
// full-precision base, although the two bases start apart.
TEST_F(TrainCli, Nf4BaseEndsCloseToTheFullPrecisionBase) {
  std::string out;
  const std::string nf4 = run_dir("nf4"), full = run_dir("full");
  ASSERT_EQ(run("output.dir=" + nf4, &out), 0) << out;
  ASSERT_EQ(
      run("output.dir=" + full + " quantization.type=none quantization.double_quant=false", &out),
      0)
      << out;
  const auto a = eval_losses(read_metrics(nf4)), b = eval_losses(read_metrics(full));
  ASSERT_EQ(a.size(), b.size());
  EXPECT_NE(a.front(), b.front()) << "the NF4 base should differ from the full-precision one";
  EXPECT_NEAR(a.back(), b.back(), 0.05 * b.back());
}

TEST_F(TrainCli, QaLoraTrainsOnAnInt4BaseAndWritesAPeftQaLoraAdapter) {
  std::string out;
  const std::string dir = run_dir("qalora");
  ASSERT_EQ(run("output.dir=" + dir +
                    " quantization.type=int4 quantization.group_size=32 adapter.type=qalora",
                &out),
            0)
      << out;
  const auto losses = train_losses(read_metrics(dir));
  ASSERT_EQ(losses.size(), 10u);
  EXPECT_LT(losses.back(), losses.front()) << "training loss did not fall";

  const auto config =
      nlohmann::json::parse(testing::read_file(dir + "/adapter/adapter_config.json"));
  EXPECT_EQ(config["use_qalora"], true);
  EXPECT_EQ(config["qalora_group_size"], 32);
  const LoadedAdapter adapter = load_peft_adapter(dir + "/adapter");
  const at::Tensor a = adapter.tensors.at("model.layers.0.self_attn.q_proj").at("lora_A.weight");
  const at::Tensor b = adapter.tensors.at("model.layers.0.self_attn.q_proj").at("lora_B.weight");
  EXPECT_EQ(a.size(0), 8);
  EXPECT_EQ(a.size(1) * 32, b.size(0));  // q_proj is square: lora_A is [r, hidden / group]
}

TEST_F(TrainCli, ExistingRunIsKeptUnlessOverwriteIsAsked) {
  const std::string dir = run_dir("existing");
  std::string out;
  ASSERT_EQ(run("output.dir=" + dir + " training.max_steps=2", &out), 0) << out;
  testing::write_file(dir + "/notes.txt", "mine");
  const std::string metrics_before = testing::read_file(dir + "/metrics.jsonl");

  EXPECT_EQ(run("output.dir=" + dir + " training.max_steps=2", &out), 3) << out;
  EXPECT_NE(out.find("output.overwrite=true"), std::string::npos) << out;
  EXPECT_EQ(testing::read_file(dir + "/metrics.jsonl"), metrics_before);

  ASSERT_EQ(run("output.dir=" + dir + " training.max_steps=3 output.overwrite=true", &out), 0)
      << out;
  EXPECT_EQ(train_losses(read_metrics(dir)).size(), 3u);
  EXPECT_EQ(testing::read_file(dir + "/notes.txt"), "mine");
}

TEST_F(TrainCli, DivergenceStopsOrSkips) {
  std::string out;
  // A learning rate this large overflows the adapters within a few steps.
  EXPECT_EQ(
      run("output.dir=" + run_dir("nan") + " training.lr=1e30 training.max_grad_norm=0", &out), 8)
      << out;
  EXPECT_NE(out.find("non-finite"), std::string::npos) << out;
}

TEST_F(TrainCli, DryRunPrintsRecipeAndMemory) {
  std::string out;
  ASSERT_EQ(run("--dry-run training.lr=1e-4", &out), 0) << out;
  EXPECT_NE(out.find("lr: 0.0001"), std::string::npos) << out;
  EXPECT_NE(out.find("GiB"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir_.file("runs")));
}

TEST_F(TrainCli, SyntheticBaseTrainsAndPlansAtAPublishedShape) {
  std::string out;
  const std::string dir = run_dir("synthetic");
  ASSERT_EQ(run("output.dir=" + dir + " model.synthetic=true training.max_steps=4", &out), 0)
      << out;
  EXPECT_NE(out.find("synthetic llama model: 2 layers"), std::string::npos) << out;
  EXPECT_EQ(out.find("loaded llama from"), std::string::npos) << "it read the checkpoint";
  const auto losses = train_losses(read_metrics(dir));
  ASSERT_EQ(losses.size(), 4u);
  for (double loss : losses) EXPECT_TRUE(std::isfinite(loss));
  // A different base than the checkpoint's: the untrained held-out loss differs.
  const std::string real = run_dir("real");
  ASSERT_EQ(run("output.dir=" + real + " training.max_steps=4", &out), 0) << out;
  EXPECT_NE(eval_losses(read_metrics(dir)).front(), eval_losses(read_metrics(real)).front());

  // --dry-run plans the known_config shape (Llama-3-8B: 32 layers of r=8 LoRA on 7 projections).
  ASSERT_EQ(run("--dry-run model.synthetic=true model.known_config=llama3-8b", &out), 0) << out;
  EXPECT_NE(out.find("trainable parameters: 20971520"), std::string::npos) << out;
  EXPECT_EQ(run("--dry-run model.synthetic=true quantization.type=int4 adapter.type=qalora", &out),
            3);
  EXPECT_NE(out.find("model.synthetic"), std::string::npos) << out;
}

}  // namespace
}  // namespace qtrain

namespace qtrain {
namespace {

// training.offload_activations changes where checkpointed layers' inputs wait, not the training:
// with the offloaded path simulated on the CPU (host copies, the CUDA path's bookkeeping), the
// losses and the adapter equal a plain run's bit for bit, LoRA dropout included; without the
// simulation the CPU says it offloads nothing.
TEST_F(TrainCli, OffloadedActivationsTrainExactlyTheSame) {
  // builtin:tiny: six layers, so four inputs travel (micro has only the first and the last).
  const std::string packed =
      " model.path=builtin:tiny data.packing=true training.max_steps=4 training.eval_every=0";
  ASSERT_EQ(run("output.dir=" + run_dir("plain") + packed), 0);
  std::string out;
  ASSERT_EQ(
      run("output.dir=" + run_dir("noop") + packed + " training.offload_activations=true", &out), 0)
      << out;
  EXPECT_NE(out.find("nothing is offloaded"), std::string::npos) << out;
  ::setenv("QTRAIN_TEST_SIMULATE_OFFLOAD", "1", 1);
  const int code = run(
      "output.dir=" + run_dir("offloaded") + packed + " training.offload_activations=true", &out);
  ::unsetenv("QTRAIN_TEST_SIMULATE_OFFLOAD");
  ASSERT_EQ(code, 0) << out;
  const auto plain = read_metrics(run_dir("plain"));
  const auto offloaded = read_metrics(run_dir("offloaded"));
  EXPECT_EQ(train_losses(plain), train_losses(offloaded));
  EXPECT_EQ(testing::read_file(run_dir("plain") + "/adapter/adapter_model.safetensors"),
            testing::read_file(run_dir("offloaded") + "/adapter/adapter_model.safetensors"));
  int64_t peak_host = 0;
  for (const auto& m : offloaded)
    peak_host = std::max(peak_host, m.value("offloaded_host_bytes", int64_t{0}));
  EXPECT_GT(peak_host, 0);
  ASSERT_NE(run("output.dir=" + run_dir("bad") +
                    " training.offload_activations=true training.gradient_checkpointing=false",
                &out),
            0);
}

}  // namespace
}  // namespace qtrain

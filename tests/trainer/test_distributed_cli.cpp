// Data-parallel training through the real qtrain binary: two CPU ranks over Gloo on loopback.
//  - 2 ranks x (micro-batch 4, accumulation 1) train the same adapter as 1 rank x (4, 2): same
//    losses and eval losses, weights equal to reduction-order tolerance; rank 0 alone writes.
//  - A 2-rank run stopped and resumed continues the uninterrupted run's losses exactly (with
//    dropout, so every rank's random state must come back); a 1-rank resume of it is refused.
//  - A killed or a hung (SIGSTOP) peer makes the survivor exit with code 9 and a clear error
//    within distributed.timeout_s; ranks with different recipes refuse to train together.
#include "data/tiny_instruct.h"
#include "peft/peft_files.h"
#include "tests/support/metrics_jsonl.h"
#include "tests/support/test_support.h"
#include "trainer/train_checkpoint.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace qtrain {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string qtrain_binary() {
  return testing::binary_dir() + "/tools/qtrain";
}

std::string cache_dir() {
  return testing::binary_dir() + "/test-cache";
}

struct Rank {
  pid_t pid = -1;
  std::string log;
};

class DistributedCli : public ::testing::Test {
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
  dropout: 0.0
  dtype: float32
data:
  path: )" + dir_.file("data.jsonl") + R"(
  max_seq_len: 128
  eval_fraction: 0.1
training:
  micro_batch_size: 4
  grad_accum_steps: 1
  max_steps: 6
  lr: 3.0e-3
  optimizer: adamw
  seed: 7
output:
  save_every: 3
distributed:
  timeout_s: 60
)");
  }

  int run(const std::string& args, std::string* out = nullptr) {
    std::string captured;
    const int code =
        testing::run_command("QTRAIN_CACHE_DIR=" + cache_dir() + " " + qtrain_binary() + " " +
                                 dir_.file("recipe.yaml") + " " + args,
                             &captured);
    if (out) *out = captured;
    return code;
  }

  // One rank started directly with torchrun-style variables; its output goes to a log file.
  Rank start_rank(int rank, int port, const std::vector<std::string>& overrides) {
    Rank r;
    r.log = dir_.file("rank" + std::to_string(rank) + "-" + std::to_string(port) + ".log");
    r.pid = fork();
    if (r.pid == 0) {
      setenv("QTRAIN_CACHE_DIR", cache_dir().c_str(), 1);
      setenv("RANK", std::to_string(rank).c_str(), 1);
      setenv("WORLD_SIZE", "2", 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      setenv("OMP_NUM_THREADS", "1", 1);
      const int fd = ::open(r.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<std::string> args = {"qtrain", dir_.file("recipe.yaml")};
      args.insert(args.end(), overrides.begin(), overrides.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(qtrain_binary().c_str(), argv.data());
      _exit(127);
    }
    return r;
  }

  // Exit code of `rank` (128 + signal), waiting at most `limit`; -1 if it is still running.
  static int wait_exit(const Rank& rank, std::chrono::seconds limit) {
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(rank.pid, &status, WNOHANG) == rank.pid) {
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }

  static void kill_and_reap(const Rank& rank) {
    kill(rank.pid, SIGKILL);
    waitpid(rank.pid, nullptr, 0);
  }

  // Waits until the run in `run_dir` has logged `steps` training steps (at most 3 minutes).
  static void wait_for_steps(const std::string& run_dir, size_t steps) {
    const auto deadline = Clock::now() + std::chrono::minutes(3);
    while (testing::metric_values(run_dir, "loss").size() < steps && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_GE(testing::metric_values(run_dir, "loss").size(), steps)
        << "training did not get under way";
  }

  testing::ScratchDir dir_{"qtrain-dist-cli"};
};

TEST_F(DistributedCli, TwoRanksTrainTheSameAdapterAsOneRankWithTheSameGlobalBatch) {
  const std::string one = dir_.file("one"), two = dir_.file("two");
  std::string out_one, out_two;
  ASSERT_EQ(run("output.dir=" + one + " training.grad_accum_steps=2", &out_one), 0) << out_one;
  ASSERT_EQ(run("output.dir=" + two + " --nproc 2", &out_two), 0) << out_two;
  EXPECT_NE(out_two.find("1 x 4 x 2 ranks = 8 samples (global batch)"), std::string::npos)
      << out_two;
  EXPECT_NE(out_two.find("rank 0 of 2 joined (gloo"), std::string::npos) << out_two;
  // Rank 0 writes the run directory and reports; rank 1 stays quiet at info level.
  EXPECT_EQ(out_two.find("[rank 1]"), std::string::npos) << out_two;

  const auto losses_one = testing::metric_values(one, "loss"),
             losses_two = testing::metric_values(two, "loss");
  ASSERT_EQ(losses_one.size(), 6u);
  ASSERT_EQ(losses_two.size(), 6u);
  for (size_t i = 0; i < losses_one.size(); ++i) {
    EXPECT_NEAR(losses_two[i], losses_one[i], 1e-4) << "step " << i + 1;
  }
  const auto tokens_one = testing::metric_values(one, "tokens"),
             tokens_two = testing::metric_values(two, "tokens");
  EXPECT_EQ(tokens_one, tokens_two);  // the same samples, globally, every step
  const auto eval_one = testing::metric_values(one, "eval_loss"),
             eval_two = testing::metric_values(two, "eval_loss");
  ASSERT_EQ(eval_one.size(), 2u);
  ASSERT_EQ(eval_two.size(), 2u);
  EXPECT_NEAR(eval_two[0], eval_one[0], 1e-5);
  EXPECT_NEAR(eval_two[1], eval_one[1], 1e-4);

  const LoadedAdapter a = load_peft_adapter(one + "/adapter");
  const LoadedAdapter b = load_peft_adapter(two + "/adapter");
  ASSERT_EQ(a.tensors.size(), 14u);
  double max_diff = 0, max_change = 0;
  const LoadedAdapter first = load_peft_adapter(two + "/checkpoints/step-00000003");
  for (const auto& [module, tensors] : a.tensors) {
    for (const auto& [name, value] : tensors) {
      max_diff = std::max(max_diff, testing::max_abs_diff(value, b.tensors.at(module).at(name)));
      max_change =
          std::max(max_change, testing::max_abs_diff(value, first.tensors.at(module).at(name)));
    }
  }
  EXPECT_LT(max_diff, 1e-4);
  EXPECT_GT(max_change, 100 * max_diff) << "the adapters barely trained; the check says little";
}

TEST_F(DistributedCli, ATwoRankResumeContinuesTheSameLosses) {
  const std::string whole = dir_.file("whole"), split = dir_.file("split");
  const std::string dropout = " adapter.dropout=0.1";  // each rank's random state matters
  std::string out;
  ASSERT_EQ(run("output.dir=" + whole + dropout + " --nproc 2", &out), 0) << out;
  ASSERT_EQ(run("output.dir=" + split + dropout + " --nproc 2 --stop-after 3", &out), 75) << out;
  const TrainCheckpoint state = load_train_checkpoint(split + "/checkpoints/step-00000003");
  EXPECT_EQ(state.trainer_state.at("world_size").get<int64_t>(), 2);
  EXPECT_TRUE(state.rng.count("cpu"));
  EXPECT_TRUE(state.rng.count("rank1/cpu"));
  EXPECT_FALSE(at::equal(state.rng.at("cpu"), state.rng.at("rank1/cpu")));

  // A different world size cannot continue it.
  EXPECT_EQ(run("output.dir=" + split + dropout + " --resume", &out), 9) << out;
  EXPECT_NE(out.find("written by a run of 2 ranks"), std::string::npos) << out;

  ASSERT_EQ(run("output.dir=" + split + dropout + " --nproc 2 --resume", &out), 0) << out;
  const auto expected = testing::metric_values(whole, "loss"),
             resumed = testing::metric_values(split, "loss");
  ASSERT_EQ(expected.size(), 6u);
  ASSERT_EQ(resumed.size(), 6u);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_DOUBLE_EQ(resumed[i], expected[i]) << "step " << i + 1;
  }
}

TEST_F(DistributedCli, AKilledPeerMakesTheSurvivorExitWithAClearError) {
  const std::string dir = dir_.file("killed");
  const int port = testing::free_loopback_port();
  const std::vector<std::string> args = {"output.dir=" + dir, "training.max_steps=100000",
                                         "output.save_every=0", "distributed.timeout_s=60"};
  const Rank rank0 = start_rank(0, port, args), rank1 = start_rank(1, port, args);
  wait_for_steps(dir, 2);
  kill(rank1.pid, SIGKILL);
  const auto killed_at = Clock::now();
  const int code = wait_exit(rank0, std::chrono::seconds(90));
  const double seconds = std::chrono::duration<double>(Clock::now() - killed_at).count();
  if (code < 0) kill_and_reap(rank0);
  waitpid(rank1.pid, nullptr, 0);
  const std::string log = testing::read_file(rank0.log);
  EXPECT_EQ(code, 9) << log;
  EXPECT_LT(seconds, 60) << "the survivor outlived distributed.timeout_s";
  EXPECT_NE(log.find("rank 0 of 2"), std::string::npos) << log;
  EXPECT_NE(log.find("a peer rank died"), std::string::npos) << log;
}

TEST_F(DistributedCli, AHungPeerMakesTheSurvivorExitAfterTheTimeout) {
  const std::string dir = dir_.file("hung");
  const int port = testing::free_loopback_port();
  const std::vector<std::string> args = {"output.dir=" + dir, "training.max_steps=100000",
                                         "output.save_every=0", "distributed.timeout_s=3"};
  const Rank rank0 = start_rank(0, port, args), rank1 = start_rank(1, port, args);
  wait_for_steps(dir, 2);
  kill(rank1.pid, SIGSTOP);
  const int code = wait_exit(rank0, std::chrono::seconds(90));
  if (code < 0) kill_and_reap(rank0);
  kill_and_reap(rank1);
  const std::string log = testing::read_file(rank0.log);
  EXPECT_EQ(code, 9) << log;
  EXPECT_NE(log.find("distributed.timeout_s = 3 s"), std::string::npos) << log;
}

TEST_F(DistributedCli, RanksWithDifferentRecipesRefuseToTrain) {
  const std::string dir = dir_.file("mismatch");
  const int port = testing::free_loopback_port();
  const Rank rank0 = start_rank(0, port, {"output.dir=" + dir});
  const Rank rank1 = start_rank(1, port, {"output.dir=" + dir, "training.lr=1e-3"});
  const int code0 = wait_exit(rank0, std::chrono::seconds(120));
  const int code1 = wait_exit(rank1, std::chrono::seconds(120));
  if (code0 < 0) kill_and_reap(rank0);
  if (code1 < 0) kill_and_reap(rank1);
  const std::string log0 = testing::read_file(rank0.log), log1 = testing::read_file(rank1.log);
  EXPECT_EQ(code0, 9) << log0;
  EXPECT_EQ(code1, 9) << log1;
  EXPECT_NE(log0.find("ranks 1 have a different recipe"), std::string::npos) << log0;
  EXPECT_FALSE(fs::exists(dir + "/metrics.jsonl")) << "a mismatched job started training";
}

TEST_F(DistributedCli, BackendNoneUnderALaunchIsARecipeError) {
  std::string out;
  EXPECT_EQ(run("output.dir=" + dir_.file("none") + " distributed.backend=none --nproc 2", &out), 3)
      << out;
  EXPECT_NE(out.find("distributed.backend"), std::string::npos) << out;
}

}  // namespace
}  // namespace qtrain

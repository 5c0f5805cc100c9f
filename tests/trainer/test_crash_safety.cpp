// Crash safety of the training state, through the real qtrain binary:
//   * SIGKILL at random moments (every step saves, so many land inside checkpoint writes), then
//     --resume, again and again: after every kill the checkpoint resume would pick is complete and
//     loads, no partial directory is ever named step-N, and the finished run's losses equal those
//     of an uninterrupted run exactly;
//   * a checkpoint write that fails (a file-size limit, as a full disk would) stops the run with a
//     clear I/O error and leaves the previous checkpoint complete and `latest`.
#include "data/tiny_instruct.h"
#include "peft/peft_files.h"
#include "tests/support/test_support.h"
#include "trainer/train_checkpoint.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace qtrain {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int64_t kSteps = 24;

class CrashSafety : public ::testing::Test {
 protected:
  void SetUp() override {
    write_tiny_instruct_dataset(dir_.file("data.jsonl"), 96, 5);
    testing::write_file(dir_.file("recipe.yaml"), R"(model:
  path: builtin:micro
  dtype: float32
  device: cpu
quantization:
  type: nf4
adapter:
  r: 8
  alpha: 16
  dropout: 0.1
  dtype: float32
data:
  path: )" + dir_.file("data.jsonl") + R"(
  max_seq_len: 96
training:
  micro_batch_size: 4
  grad_accum_steps: 1
  max_steps: )" + std::to_string(kSteps) + R"(
  lr: 3.0e-3
  warmup_steps: 2
  seed: 11
output:
  save_every: 1
  keep_last: 2
)");
  }

  // Starts qtrain on the recipe with output.dir=`run`; its output goes to `log`. With a
  // `file_limit` (bytes) every file it writes is capped there, as a full disk would cap it.
  pid_t start(const std::string& run, bool resume, const std::string& log,
              rlim_t file_limit = RLIM_INFINITY) {
    const pid_t pid = fork();
    if (pid != 0) return pid;
    const std::string cache = testing::binary_dir() + "/test-cache";
    setenv("QTRAIN_CACHE_DIR", cache.c_str(), 1);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    if (file_limit != RLIM_INFINITY) {
      signal(SIGXFSZ, SIG_IGN);  // writes past the limit fail with EFBIG instead of killing
      const rlimit limit{file_limit, file_limit};
      setrlimit(RLIMIT_FSIZE, &limit);
    }
    const std::string binary = testing::binary_dir() + "/tools/qtrain";
    const std::string recipe = dir_.file("recipe.yaml"), out = "output.dir=" + run;
    if (resume) {
      execl(binary.c_str(), "qtrain", recipe.c_str(), out.c_str(), "--resume",
            static_cast<char*>(nullptr));
    } else {
      execl(binary.c_str(), "qtrain", recipe.c_str(), out.c_str(), static_cast<char*>(nullptr));
    }
    _exit(127);
  }

  static int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

  testing::ScratchDir dir_{"qtrain-crash"};
};

std::map<int64_t, double> losses_by_step(const std::string& run) {
  std::map<int64_t, double> out;
  std::ifstream in(run + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto m = nlohmann::json::parse(line);
    if (m.contains("loss") && !m.contains("event")) out[m["step"]] = m["loss"];
  }
  return out;
}

// Every step-N directory is complete, and the one resume would take loads.
void expect_consistent_checkpoints(const std::string& run, const std::string& when) {
  const std::string root = run + "/checkpoints";
  if (!fs::exists(root)) return;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step-", 0) != 0) continue;
    for (const char* file : {"adapter_config.json", "adapter_model.safetensors",
                             "optimizer.safetensors", "rng.safetensors", "trainer_state.json"}) {
      EXPECT_TRUE(fs::exists(entry.path() / file)) << when << ": " << name << " lacks " << file;
    }
  }
  const auto latest = latest_checkpoint(run);
  if (!latest) return;
  try {
    const TrainCheckpoint state = load_train_checkpoint(*latest);
    EXPECT_GE(state.step, 1) << when;
    EXPECT_LE(state.step, kSteps) << when;
    EXPECT_EQ(load_peft_adapter(*latest).tensors.size(), 14u) << when;
  } catch (const std::exception& e) {
    ADD_FAILURE() << when << ": the latest checkpoint " << *latest
                  << " does not load: " << e.what();
  }
}

TEST_F(CrashSafety, KilledAtRandomMomentsThenResumedGivesTheUninterruptedLosses) {
  const std::string reference = dir_.file("reference"), killed = dir_.file("killed");
  const auto began = Clock::now();
  pid_t pid = start(reference, false, dir_.file("reference.log"));
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_EQ(exit_code(status), 0) << testing::read_file(dir_.file("reference.log"));
  const double whole_run = std::chrono::duration<double>(Clock::now() - began).count();
  const std::map<int64_t, double> expected = losses_by_step(reference);
  ASSERT_EQ(expected.size(), static_cast<size_t>(kSteps));

  // Kill moments uniform over a whole run (start-up, steps and checkpoint writes alike).
  std::mt19937 random(20261123);
  std::uniform_real_distribution<double> moment(0.05 * whole_run, 1.0 * whole_run);
  constexpr int kKills = 14;
  int killed_runs = 0, during_checkpoint_write = 0, finished_early = 0;
  for (int trial = 0; trial < kKills; ++trial) {
    pid = start(killed, trial > 0, dir_.file("killed.log"));
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(moment(random)));
    bool exited = false;
    while (Clock::now() < deadline && !exited) {
      exited = waitpid(pid, &status, WNOHANG) == pid;
      if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (exited) {
      ASSERT_EQ(exit_code(status), 0) << testing::read_file(dir_.file("killed.log"));
      ++finished_early;
      break;
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    ++killed_runs;
    // A staging directory left behind means the kill hit a checkpoint write.
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(killed + "/checkpoints", ec)) {
      if (entry.path().filename().string().find(".tmp-") != std::string::npos) {
        ++during_checkpoint_write;
        break;
      }
    }
    expect_consistent_checkpoints(killed, "after kill " + std::to_string(trial + 1));
  }
  if (finished_early == 0) {
    pid = start(killed, true, dir_.file("killed.log"));
    waitpid(pid, &status, 0);
    ASSERT_EQ(exit_code(status), 0) << testing::read_file(dir_.file("killed.log"));
  }
  std::cout << "kills: " << killed_runs << " (" << during_checkpoint_write
            << " during a checkpoint write), whole run " << whole_run << " s\n";
  EXPECT_GE(killed_runs, 8);
  const std::map<int64_t, double> losses = losses_by_step(killed);
  ASSERT_EQ(losses.size(), expected.size());
  for (const auto& [step, loss] : expected)
    EXPECT_DOUBLE_EQ(losses.at(step), loss) << "step " << step;
  // Resumes cleared the staging directories that kills left behind.
  for (const auto& entry : fs::directory_iterator(killed + "/checkpoints")) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  }
}

TEST_F(CrashSafety, AFailedCheckpointWriteKeepsThePreviousCheckpoint) {
  const std::string run = dir_.file("full");
  std::string text = testing::read_file(dir_.file("recipe.yaml"));
  text.replace(text.find("save_every: 1"), 13, "save_every: 4");
  testing::write_file(dir_.file("recipe.yaml"), text);
  pid_t pid = start(run, false, dir_.file("full.log"));
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_EQ(exit_code(status), 0) << testing::read_file(dir_.file("full.log"));
  const auto before = latest_checkpoint(run);
  ASSERT_TRUE(before.has_value());
  const std::string last_name = fs::path(*before).filename().string();
  EXPECT_EQ(last_name, "step-00000024");
  const std::string state_before = testing::read_file(*before + "/trainer_state.json");
  const std::string adapter_before = testing::read_file(*before + "/adapter_model.safetensors");

  // Continue for 8 more steps with every file capped at 40 KiB: the run resumes (metrics, logs
  // and run_info fit), trains, and fails at its first checkpoint: the adapter (16,384 float32
  // parameters, 64 KiB) does not fit.
  text.replace(text.find("max_steps: 24"), 13, "max_steps: 32");
  testing::write_file(dir_.file("recipe.yaml"), text);
  const std::string log = dir_.file("full2.log");
  pid = start(run, true, log, 40 * 1024);
  waitpid(pid, &status, 0);
  const std::string out = testing::read_file(log);
  EXPECT_EQ(exit_code(status), 4) << out;
  EXPECT_NE(out.find("File too large"), std::string::npos) << out;
  EXPECT_NE(out.find("checkpoints/"), std::string::npos) << "the error names no file: " << out;

  const auto after = latest_checkpoint(run);
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(*after, *before);
  EXPECT_EQ(testing::read_file(*after + "/trainer_state.json"), state_before);
  EXPECT_EQ(testing::read_file(*after + "/adapter_model.safetensors"), adapter_before);
  expect_consistent_checkpoints(run, "after the failed write");
  EXPECT_FALSE(fs::exists(run + "/checkpoints/step-00000028"));
  for (const auto& entry : fs::directory_iterator(run + "/checkpoints")) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos)
        << "staging left behind: " << entry.path();
  }
}

}  // namespace
}  // namespace qtrain

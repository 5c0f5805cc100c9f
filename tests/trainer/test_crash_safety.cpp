// Crash safety of the training state, through the real qtrain binary:
//   * SIGKILL at random moments (every step saves and keeps only the newest checkpoint, and a test
//     delay stretches the steps of replacing and pruning one, so many kills land inside checkpoint
//     writes, prunes and re-saves), then --resume, again and again: after every kill every
//     step-N directory is complete, the checkpoint resume would pick loads, and the finished
//     run's losses equal those of an uninterrupted run exactly;
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

constexpr int64_t kSteps = 12;

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
  r: 64
  alpha: 16
  dropout: 0.1
  dtype: float32
data:
  path: )" + dir_.file("data.jsonl") + R"(
  max_seq_len: 256
training:
  micro_batch_size: 1
  grad_accum_steps: 1
  max_steps: )" + std::to_string(kSteps) + R"(
  lr: 3.0e-3
  warmup_steps: 2
  seed: 11
output:
  save_every: 1
  keep_last: 1
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
    setenv("QTRAIN_CHECKPOINT_TEST_DELAY_MS", "25", 1);
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

// Whether a checkpoint staging directory (".step-N.tmp-...") exists in the run.
bool staging_dir_exists(const std::string& run) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run + "/checkpoints", ec)) {
    if (entry.path().filename().string().find(".tmp-") != std::string::npos) return true;
  }
  return false;
}

// Whether a checkpoint on its way out (".trash-step-N-...": pruned or replaced) exists.
bool trash_dir_exists(const std::string& run) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run + "/checkpoints", ec)) {
    if (entry.path().filename().string().rfind(".trash-", 0) == 0) return true;
  }
  return false;
}

// The step named by checkpoints/latest, or -1.
int64_t latest_step(const std::string& run) {
  std::ifstream in(run + "/checkpoints/latest");
  std::string name;
  if (!std::getline(in, name) || name.size() < 6) return -1;
  return std::stoll(name.substr(5));
}

// The newest step-N directory, or -1.
int64_t newest_step_dir(const std::string& run) {
  int64_t newest = -1;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run + "/checkpoints", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step-", 0) == 0) newest = std::max<int64_t>(newest, std::stoll(name.substr(5)));
  }
  return newest;
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
  const std::string reference = dir_.file("reference");
  const auto began = Clock::now();
  pid_t pid = start(reference, false, dir_.file("reference.log"));
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_EQ(exit_code(status), 0) << testing::read_file(dir_.file("reference.log"));
  const double whole_run = std::chrono::duration<double>(Clock::now() - began).count();
  const std::map<int64_t, double> expected = losses_by_step(reference);
  ASSERT_EQ(expected.size(), static_cast<size_t>(kSteps));

  // Kill moments uniform over a whole run's time (start-up, steps and checkpoint writes alike);
  // each restart resumes, so the run advances between kills. A run that finishes
  // is checked and a new one started, until enough kills have landed.
  std::mt19937 random(20261123);
  std::uniform_real_distribution<double> moment(0.05 * whole_run, 1.0 * whole_run);
  constexpr int kKills = 15;
  int kills = 0, during_checkpoint_write = 0, during_prune = 0, before_latest = 0;
  int runs_finished = 0;
  std::string killed = dir_.file("killed-0");
  bool resume = false;
  auto check_finished_run = [&] {
    const std::map<int64_t, double> losses = losses_by_step(killed);
    ASSERT_EQ(losses.size(), expected.size()) << killed;
    for (const auto& [step, loss] : expected) {
      EXPECT_DOUBLE_EQ(losses.at(step), loss) << killed << " step " << step;
    }
    // Resumes cleared the staging and trash directories that kills left behind.
    for (const auto& entry : fs::directory_iterator(killed + "/checkpoints")) {
      EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
      EXPECT_NE(entry.path().filename().string().rfind(".trash-", 0), 0u) << entry.path();
    }
    ++runs_finished;
  };
  while (kills < kKills) {
    pid = start(killed, resume, killed + ".log");
    resume = true;
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(moment(random)));
    // Every third kill waits instead for a checkpoint write to be under way (its staging
    // directory to appear), and every third for a prune (a trash directory), and strikes then.
    const bool at_a_write = kills % 3 == 2, at_a_prune = kills % 3 == 1;
    bool exited = false;
    while (!exited) {
      exited = waitpid(pid, &status, WNOHANG) == pid;
      if (exited) break;
      if (at_a_write && staging_dir_exists(killed)) break;
      if (at_a_prune && trash_dir_exists(killed)) break;
      if (!at_a_write && !at_a_prune && Clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::microseconds(at_a_write || at_a_prune ? 200 : 2000));
    }
    if (exited) {
      ASSERT_EQ(exit_code(status), 0) << testing::read_file(killed + ".log");
      check_finished_run();
      killed = dir_.file("killed-" + std::to_string(runs_finished));
      resume = false;
      continue;
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    ++kills;
    // A staging directory left behind means the kill hit a checkpoint write, a trash directory a
    // prune or a replacement; a step-N newer than `latest` makes the resume re-save step N.
    if (staging_dir_exists(killed)) ++during_checkpoint_write;
    if (trash_dir_exists(killed)) ++during_prune;
    if (newest_step_dir(killed) > latest_step(killed) && latest_step(killed) >= 0) ++before_latest;
    expect_consistent_checkpoints(killed, "after kill " + std::to_string(kills));
  }
  pid = start(killed, resume, killed + ".log");
  waitpid(pid, &status, 0);
  ASSERT_EQ(exit_code(status), 0) << testing::read_file(killed + ".log");
  check_finished_run();
  std::cout << "kills: " << kills << " (" << during_checkpoint_write
            << " during a checkpoint write, " << during_prune << " during a prune, "
            << before_latest << " before `latest` named the new step: a re-save follows), "
            << "runs finished after kills: " << runs_finished << ", whole run " << whole_run
            << " s\n";
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
  EXPECT_EQ(last_name, "step-00000012");
  const std::string state_before = testing::read_file(*before + "/trainer_state.json");
  const std::string adapter_before = testing::read_file(*before + "/adapter_model.safetensors");

  // Continue for 8 more steps with every file capped at 40 KiB: the run resumes (metrics, logs
  // and run_info fit), trains, and fails at its first checkpoint: the adapter (r=64: 131,072
  // float32 parameters, 512 KiB) does not fit.
  text.replace(text.find("max_steps: 12"), 13, "max_steps: 20");
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
  EXPECT_FALSE(fs::exists(run + "/checkpoints/step-00000016"));
  for (const auto& entry : fs::directory_iterator(run + "/checkpoints")) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos)
        << "staging left behind: " << entry.path();
  }
}

TEST_F(CrashSafety, ResumeWithoutACheckpointRestartsOnlyAnUnfinishedRun) {
  const std::string run = dir_.file("nockpt");
  std::string text = testing::read_file(dir_.file("recipe.yaml"));
  text.replace(text.find("save_every: 1"), 13, "save_every: 0");
  text.replace(text.find("max_steps: " + std::to_string(kSteps)),
               11 + std::to_string(kSteps).size(), "max_steps: 3");
  testing::write_file(dir_.file("recipe.yaml"), text);
  int status = 0;
  waitpid(start(run, false, dir_.file("a.log")), &status, 0);
  ASSERT_EQ(exit_code(status), 0) << testing::read_file(dir_.file("a.log"));
  const std::string adapter = testing::read_file(run + "/adapter/adapter_model.safetensors");

  // Finished (adapter/ written) but without its checkpoints: --resume must not train it over.
  fs::remove_all(run + "/checkpoints");
  waitpid(start(run, true, dir_.file("b.log")), &status, 0);
  const std::string refused = testing::read_file(dir_.file("b.log"));
  EXPECT_EQ(exit_code(status), 3) << refused;
  EXPECT_NE(refused.find("the run has finished"), std::string::npos) << refused;
  EXPECT_EQ(testing::read_file(run + "/adapter/adapter_model.safetensors"), adapter);

  // Killed before its first checkpoint (recipe.yaml and metrics, no checkpoint, no adapter/), as
  // a requeued batch job finds it: --resume starts it over and it completes.
  fs::remove_all(run + "/adapter");
  waitpid(start(run, true, dir_.file("c.log")), &status, 0);
  const std::string restarted = testing::read_file(dir_.file("c.log"));
  EXPECT_EQ(exit_code(status), 0) << restarted;
  EXPECT_NE(restarted.find("no checkpoint was written; starting over"), std::string::npos)
      << restarted;
  EXPECT_EQ(losses_by_step(run).size(), 3u);
  EXPECT_EQ(testing::read_file(run + "/adapter/adapter_model.safetensors"), adapter);
}

TEST_F(CrashSafety, IncompleteCheckpointsAreNeverLoadedByResumeOrExport) {
  // A run directory as a qtrain without crash-consistent pruning could leave it: the newest
  // checkpoint (the one `latest` names) lacks a file.
  const std::string run = dir_.file("incomplete");
  std::string text = testing::read_file(dir_.file("recipe.yaml"));
  text.replace(text.find("keep_last: 1"), 12, "keep_last: 5");
  text.replace(text.find("max_steps: " + std::to_string(kSteps)),
               11 + std::to_string(kSteps).size(), "max_steps: 4");
  testing::write_file(dir_.file("recipe.yaml"), text);
  int status = 0;
  waitpid(start(run, false, dir_.file("i1.log")), &status, 0);
  ASSERT_EQ(exit_code(status), 0) << testing::read_file(dir_.file("i1.log"));
  fs::remove_all(run + "/adapter");
  fs::remove(run + "/checkpoints/step-00000004/optimizer.safetensors");

  // qexport of the run takes the newest complete checkpoint, and says why.
  std::string out;
  const std::string qexport = testing::binary_dir() + "/tools/qexport " + run + " -f adapter -o " +
                              dir_.file("exported") + " 2>&1";
  ASSERT_EQ(testing::run_command(qexport, &out), 0) << out;
  EXPECT_NE(out.find("step-00000004, which is incomplete (no optimizer.safetensors)"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("exporting its newest checkpoint step-00000003"), std::string::npos) << out;

  // --resume continues from step 3 and trains step 4 again, replacing the broken directory.
  waitpid(start(run, true, dir_.file("i2.log")), &status, 0);
  const std::string log = testing::read_file(dir_.file("i2.log"));
  ASSERT_EQ(exit_code(status), 0) << log;
  EXPECT_NE(log.find("using the newest complete checkpoint"), std::string::npos) << log;
  expect_consistent_checkpoints(run, "after the resume");
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step-00000004/optimizer.safetensors"));
  EXPECT_TRUE(fs::exists(run + "/adapter/adapter_model.safetensors"));
}

}  // namespace
}  // namespace qtrain

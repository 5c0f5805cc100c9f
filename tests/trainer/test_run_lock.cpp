// One qtrain per run directory: the lock on <output.dir>/.qtrain.lock (trainer/run_lock.h) in
// process, and through two real qtrain processes: a second one on a live run (--resume or
// output.overwrite) is refused naming the first's pid and host, qexport reads it, and the first
// finishes unharmed; a SIGKILLed holder's leftover lock file does not stop --resume.
#include "core/error.h"
#include "data/tiny_instruct.h"
#include "tests/support/test_support.h"
#include "trainer/run_lock.h"

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

namespace qtrain {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kSteps = 12;

std::string this_host() {
  char host[256] = "";
  ::gethostname(host, sizeof(host) - 1);
  return host;
}

std::string holder_text(pid_t pid) {
  return "pid " + std::to_string(pid) + " on " + this_host();
}

Error acquire_error(const std::string& dir) {
  try {
    RunLock::acquire(dir);
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "the lock on " << dir << " was granted twice";
  return Error(ErrorKind::kInternal, "no error");
}

TEST(RunLock, MakesTheDirectoryNamesItsHolderAndLeavesNothingBehind) {
  testing::ScratchDir scratch("qtrain-run-lock");
  const std::string dir = scratch.file("runs/a");
  const std::string lock_file = dir + "/" + kRunLockFile;
  EXPECT_FALSE(run_lock_holder(dir).has_value());
  {
    const auto lock = RunLock::acquire(dir);
    ASSERT_TRUE(fs::exists(lock_file));
    EXPECT_EQ(testing::read_file(lock_file),
              "pid " + std::to_string(::getpid()) + "\nhost " + this_host() + "\n");
    const auto holder = run_lock_holder(dir);
    ASSERT_TRUE(holder.has_value());
    EXPECT_EQ(holder->pid, std::to_string(::getpid()));
    EXPECT_EQ(holder->host, this_host());
  }
  // A run that never started (nothing written) leaves no directory; the parent stays.
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(fs::exists(scratch.file("runs")));
  EXPECT_FALSE(run_lock_holder(dir).has_value());
}

TEST(RunLock, ASecondLockIsRefusedEvenInTheSameProcess) {
  testing::ScratchDir scratch("qtrain-run-lock");
  const std::string dir = scratch.file("run");
  fs::create_directories(dir);
  testing::write_file(dir + "/recipe.yaml", "kept");
  {
    const auto lock = RunLock::acquire(dir);
    const Error e = acquire_error(dir);
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_EQ(e.context().file, dir);
    EXPECT_EQ(e.context().field, "output.dir");
    EXPECT_NE(e.message().find(holder_text(::getpid())), std::string::npos) << e.what();
  }
  // Released: the next run takes it; a directory it did not make is kept with its files.
  EXPECT_TRUE(fs::exists(dir + "/recipe.yaml"));
  EXPECT_FALSE(fs::exists(dir + "/" + kRunLockFile));
  EXPECT_NO_THROW(RunLock::acquire(dir));
}

TEST(RunLock, ALockFileLeftByADeadProcessIsTakenOver) {
  testing::ScratchDir scratch("qtrain-run-lock");
  const std::string dir = scratch.path();
  testing::write_file(dir + "/" + kRunLockFile, "pid 999999999\nhost elsewhere\n");
  EXPECT_FALSE(run_lock_holder(dir).has_value());
  const auto lock = RunLock::acquire(dir);
  EXPECT_EQ(run_lock_holder(dir)->pid, std::to_string(::getpid()));
}

TEST(RunLock, ALockPathThatCannotBeAFileIsAnIoError) {
  testing::ScratchDir scratch("qtrain-run-lock");
  fs::create_directories(scratch.file(kRunLockFile));
  try {
    RunLock::acquire(scratch.path());
    ADD_FAILURE() << "a directory in place of the lock file was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(e.message().find("cannot create the lock file"), std::string::npos) << e.what();
  }
}

// Two real qtrain processes on one run directory.
class RunLockCli : public ::testing::Test {
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
  dtype: float32
data:
  path: )" + dir_.file("data.jsonl") + R"(
  max_seq_len: 128
training:
  micro_batch_size: 1
  grad_accum_steps: 1
  max_steps: )" + std::to_string(kSteps) + R"(
  lr: 3.0e-3
  seed: 3
output:
  save_every: 1
  keep_last: 1
  tensorboard: false
)");
  }

  // Starts qtrain in the background with its output in `log`.
  pid_t start(const std::string& run, const std::string& log) {
    const pid_t pid = fork();
    if (pid != 0) return pid;
    const std::string cache = testing::binary_dir() + "/test-cache";
    setenv("QTRAIN_CACHE_DIR", cache.c_str(), 1);
    setenv("OMP_NUM_THREADS", "1", 1);
    setenv("QTRAIN_CHECKPOINT_TEST_DELAY_MS", "25", 1);  // steps long enough to act between
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    const std::string binary = testing::binary_dir() + "/tools/qtrain";
    const std::string recipe = dir_.file("recipe.yaml"), out = "output.dir=" + run;
    execl(binary.c_str(), "qtrain", recipe.c_str(), out.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }

  // Runs qtrain to the end; returns its exit code and output.
  int run(const std::string& args, std::string* out) {
    return testing::run_command("OMP_NUM_THREADS=1 QTRAIN_CACHE_DIR=" + testing::binary_dir() +
                                    "/test-cache " + testing::binary_dir() + "/tools/qtrain " +
                                    dir_.file("recipe.yaml") + " " + args,
                                out);
  }

  // Waits until `run` has its first checkpoint; false when the process exits first.
  static bool wait_for_checkpoint(pid_t pid, const std::string& run, int* status) {
    const auto deadline = Clock::now() + std::chrono::minutes(5);
    while (Clock::now() < deadline) {
      if (fs::exists(run + "/checkpoints/latest")) return true;
      if (waitpid(pid, status, WNOHANG) == pid) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  static int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

  static size_t logged_steps(const std::string& run) {
    std::ifstream in(run + "/metrics.jsonl");
    size_t steps = 0;
    for (std::string line; std::getline(in, line);) {
      const auto m = nlohmann::json::parse(line);
      if (m.contains("loss") && !m.contains("event")) ++steps;
    }
    return steps;
  }

  testing::ScratchDir dir_{"qtrain-run-lock-cli"};
};

TEST_F(RunLockCli, ASecondQtrainOnALiveRunIsRefusedAndTheFirstFinishes) {
  const std::string run_dir = dir_.file("run");
  const std::string log = dir_.file("first.log");
  const pid_t first = start(run_dir, log);
  int status = 0;
  ASSERT_TRUE(wait_for_checkpoint(first, run_dir, &status)) << testing::read_file(log);
  // Frozen while holding the lock, perhaps in the middle of a checkpoint write: whatever a second
  // process did to the run directory now, the first would meet when it continues.
  ASSERT_EQ(kill(first, SIGSTOP), 0);
  for (const std::string& second :
       {std::string("--resume"), std::string("output.overwrite=true")}) {
    std::string out;
    EXPECT_EQ(run("output.dir=" + run_dir + " " + second, &out), 4) << second << ": " << out;
    EXPECT_NE(out.find(holder_text(first)), std::string::npos) << second << ": " << out;
    EXPECT_NE(out.find(run_dir + ": field 'output.dir': another qtrain process"), std::string::npos)
        << second << ": " << out;
  }
  // qexport only reads a live run: it exports the newest checkpoint and says the run is going.
  std::string exported;
  EXPECT_EQ(testing::run_command("QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache " +
                                     testing::binary_dir() + "/tools/qexport " + run_dir +
                                     " -f adapter -o " + dir_.file("exported"),
                                 &exported),
            0)
      << exported;
  EXPECT_NE(exported.find("is still training (qtrain " + holder_text(first) + ")"),
            std::string::npos)
      << exported;
  EXPECT_TRUE(fs::exists(dir_.file("exported/adapter_model.safetensors")));
  ASSERT_EQ(kill(first, SIGCONT), 0);
  waitpid(first, &status, 0);
  ASSERT_EQ(exit_code(status), 0) << testing::read_file(log);
  EXPECT_EQ(logged_steps(run_dir), static_cast<size_t>(kSteps));
  EXPECT_TRUE(fs::exists(run_dir + "/adapter/adapter_model.safetensors"));
  EXPECT_FALSE(fs::exists(run_dir + "/" + kRunLockFile)) << "a finished run leaves no lock file";
}

TEST_F(RunLockCli, AKilledHoldersLockFileDoesNotStopResume) {
  const std::string run_dir = dir_.file("run");
  const std::string log = dir_.file("killed.log");
  const pid_t first = start(run_dir, log);
  int status = 0;
  ASSERT_TRUE(wait_for_checkpoint(first, run_dir, &status)) << testing::read_file(log);
  ASSERT_EQ(kill(first, SIGKILL), 0);
  waitpid(first, &status, 0);
  ASSERT_TRUE(fs::exists(run_dir + "/" + kRunLockFile));
  EXPECT_NE(testing::read_file(run_dir + "/" + kRunLockFile).find("pid " + std::to_string(first)),
            std::string::npos);

  std::string out;
  ASSERT_EQ(run("output.dir=" + run_dir + " --resume", &out), 0) << out;
  EXPECT_EQ(logged_steps(run_dir), static_cast<size_t>(kSteps));
  EXPECT_FALSE(fs::exists(run_dir + "/" + kRunLockFile));
}

}  // namespace
}  // namespace qtrain

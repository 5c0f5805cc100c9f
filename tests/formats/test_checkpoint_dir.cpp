// The checkpoint directory layout: which checkpoint readers take, and that replacing and pruning
// never leave a `step-N` directory that lacks a file.
#include "formats/checkpoint/checkpoint_dir.h"

#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace qtrain {
namespace {
namespace fs = std::filesystem;

class CheckpointDir : public ::testing::Test {
 protected:
  std::string run() const { return dir_.file("run"); }
  fs::path root() const { return fs::path(run()) / "checkpoints"; }

  // A complete checkpoint directory at `path` whose files all hold `tag`.
  static void write_complete(const fs::path& path, const std::string& tag) {
    fs::create_directories(path);
    for (const char* file : kCheckpointFiles) testing::write_file((path / file).string(), tag);
  }
  void write_step(int64_t step, const std::string& tag) {
    write_complete(root() / checkpoint_dir_name(step), tag);
  }
  void write_latest(const std::string& text) {
    testing::write_file((root() / "latest").string(), text);
  }

  testing::ScratchDir dir_{"qtrain-ckptdir"};
};

TEST_F(CheckpointDir, NamesAreStepAndEightOrMoreDigits) {
  EXPECT_EQ(checkpoint_dir_name(40), "step-00000040");
  EXPECT_EQ(checkpoint_dir_name(123456789), "step-123456789");
  EXPECT_TRUE(is_checkpoint_dir_name("step-00000040"));
  EXPECT_TRUE(is_checkpoint_dir_name("step-123456789"));
  EXPECT_FALSE(is_checkpoint_dir_name("step-40"));
  EXPECT_FALSE(is_checkpoint_dir_name("step-0000004x"));
  EXPECT_FALSE(is_checkpoint_dir_name("../other/checkpoints/step-00000040"));
  EXPECT_FALSE(is_checkpoint_dir_name(".step-00000040.tmp-1-2"));
}

TEST_F(CheckpointDir, LatestIsTheNamedCompleteCheckpoint) {
  EXPECT_EQ(latest_checkpoint(run()), std::nullopt);
  write_step(4, "a");
  write_step(8, "b");
  write_latest("step-00000004\n");
  EXPECT_EQ(latest_checkpoint(run()), (root() / "step-00000004").string());
}

TEST_F(CheckpointDir, AnIncompleteOrForeignLatestFallsBackToTheNewestCompleteOne) {
  write_step(4, "a");
  write_step(8, "b");
  write_step(12, "c");
  fs::remove(root() / "step-00000012" / "optimizer.safetensors");  // as an old prune left it
  write_latest("step-00000012\n");
  EXPECT_EQ(complete_checkpoint_names(root()),
            (std::vector<std::string>{"step-00000004", "step-00000008"}));
  EXPECT_EQ(missing_checkpoint_file(root() / "step-00000012"), "optimizer.safetensors");
  EXPECT_EQ(latest_checkpoint(run()), (root() / "step-00000008").string());

  // `latest` naming a directory of another run is never followed.
  write_complete(fs::path(dir_.file("other")) / "checkpoints" / "step-00000099", "x");
  write_latest("../../other/checkpoints/step-00000099\n");
  EXPECT_EQ(latest_checkpoint(run()), (root() / "step-00000008").string());
  write_latest("step-00000016\n");  // missing
  EXPECT_EQ(latest_checkpoint(run()), (root() / "step-00000008").string());
}

TEST_F(CheckpointDir, StepsPastEightDigitsSortAfterShorterNames) {
  write_step(99999999, "a");
  write_step(100000000, "b");
  EXPECT_EQ(complete_checkpoint_names(root()),
            (std::vector<std::string>{"step-99999999", "step-100000000"}));
  EXPECT_EQ(latest_checkpoint(run()), (root() / "step-100000000").string());
}

TEST_F(CheckpointDir, InstallingOverAnExistingStepReplacesItWhole) {
  write_step(8, "old");
  const fs::path staging = root() / ".step-00000008.tmp-1-1";
  write_complete(staging, "new");
  install_checkpoint_dir(staging, root() / "step-00000008");
  for (const char* file : kCheckpointFiles) {
    EXPECT_EQ(testing::read_file((root() / "step-00000008" / file).string()), "new") << file;
  }
  EXPECT_FALSE(fs::exists(staging));
  EXPECT_EQ(std::distance(fs::directory_iterator(root()), fs::directory_iterator()), 1);

  const fs::path fresh = root() / ".step-00000009.tmp-1-1";
  write_complete(fresh, "nine");
  install_checkpoint_dir(fresh, root() / "step-00000009");
  EXPECT_EQ(testing::read_file((root() / "step-00000009" / "trainer_state.json").string()), "nine");
}

TEST_F(CheckpointDir, PruningKeepsTheNewestAndTheNamedOne) {
  for (int64_t step : {1, 2, 3, 4, 5}) write_step(step, "s");
  prune_checkpoints(root(), 2, "step-00000001");
  EXPECT_EQ(complete_checkpoint_names(root()),
            (std::vector<std::string>{"step-00000001", "step-00000004", "step-00000005"}));
  prune_checkpoints(root(), 0, "step-00000005");  // keep_last below 1 keeps one
  EXPECT_EQ(complete_checkpoint_names(root()), (std::vector<std::string>{"step-00000005"}));
  for (const auto& entry : fs::directory_iterator(root())) {
    EXPECT_EQ(entry.path().filename().string().rfind(".trash-", 0), std::string::npos);
  }
}

TEST_F(CheckpointDir, StaleStagingAndTrashOfOtherProcessesAreRemoved) {
  write_step(3, "s");
  const std::string own = std::to_string(::getpid());
  write_complete(root() / ".step-00000004.tmp-999999999-5", "dead staging");
  write_complete(root() / ".trash-step-00000002-999999999-7", "dead trash");
  write_complete(root() / (".step-00000005.tmp-" + own + "-5"), "live staging");
  remove_stale_checkpoint_temps(root());
  EXPECT_FALSE(fs::exists(root() / ".step-00000004.tmp-999999999-5"));
  EXPECT_FALSE(fs::exists(root() / ".trash-step-00000002-999999999-7"));
  EXPECT_TRUE(fs::exists(root() / (".step-00000005.tmp-" + own + "-5")));
  EXPECT_TRUE(fs::exists(root() / "step-00000003" / "trainer_state.json"));
}

}  // namespace
}  // namespace qtrain

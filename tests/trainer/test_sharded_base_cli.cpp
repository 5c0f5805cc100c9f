// distributed.strategy shard through the real qtrain binary: two CPU ranks over Gloo on loopback,
// the builtin micro model (2 decoder layers, NF4 with double quantization).
//  - shard trains the same losses and adapter as one process on the same global batch and as
//    ddp (1e-4);
//  - each rank's resident quantized base, measured on its live tensors, is half the whole (up to
//    the padding), and the gathered weights alive at once stay below one layer's;
//  - the bytes all-gathered per step equal whole bytes x (N-1)/N x 3 passes (forward,
//    checkpoint recompute, backward) x micro-batches;
//  - a sharded run stopped and resumed continues the uninterrupted run's losses exactly;
//  - a killed peer makes the survivor exit with code 9;
//  - shard over a base with nothing quantized, or an unknown strategy, is a recipe error.
#include "data/tiny_instruct.h"
#include "peft/peft_files.h"
#include "tests/support/metrics_jsonl.h"
#include "tests/support/test_support.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace qtrain {
namespace {
using Clock = std::chrono::steady_clock;

std::string qtrain_binary() {
  return testing::binary_dir() + "/tools/qtrain";
}

double max_adapter_diff(const std::string& a_dir, const std::string& b_dir) {
  const LoadedAdapter a = load_peft_adapter(a_dir), b = load_peft_adapter(b_dir);
  EXPECT_EQ(a.tensors.size(), b.tensors.size());
  double diff = 0;
  for (const auto& [module, tensors] : a.tensors) {
    for (const auto& [name, value] : tensors) {
      diff = std::max(diff, testing::max_abs_diff(value, b.tensors.at(module).at(name)));
    }
  }
  return diff;
}

// Rank 0's "<N> decoder projections split over 2 ranks (<W> quantized bytes whole, <S> on each
// rank; ...); per rank: read and quantized [<K0>,<K1>] of <N> ([<P0>,<P1>] bytes of <U>), held at
// most [<H0>,<H1>] quantized bytes while loading, resident now [<R0>,<R1>] bytes".
struct ShardLog {
  int64_t projections = 0, whole = 0, shard = 0, used = 0;
  std::vector<int64_t> produced, produced_bytes, peak_held, resident;
};

ShardLog parse_shard_log(const std::string& out) {
  const std::string pair = R"(\[(\d+),(\d+)\])";
  const std::regex re(
      R"((\d+) decoder projections split over 2 ranks \((\d+) quantized bytes whole, (\d+) on )"
      R"(each rank; prefetch \d+\); per rank: read and quantized )" +
      pair + R"( of \d+ \()" + pair + R"( bytes of (\d+)\), held at most )" + pair +
      R"( quantized bytes while loading, resident now )" + pair + " bytes");
  std::smatch m;
  ShardLog log;
  if (!std::regex_search(out, m, re)) return log;
  auto at = [&](int i) { return static_cast<int64_t>(std::stoll(m[i])); };
  log.projections = at(1);
  log.whole = at(2);
  log.shard = at(3);
  log.produced = {at(4), at(5)};
  log.produced_bytes = {at(6), at(7)};
  log.used = at(8);
  log.peak_held = {at(9), at(10)};
  log.resident = {at(11), at(12)};
  return log;
}

class ShardedBaseCli : public ::testing::Test {
 protected:
  void SetUp() override {
    write_tiny_instruct_dataset(dir_.file("data.jsonl"), 160, 3);
    testing::write_file(dir_.file("recipe.yaml"), R"(model:
  path: builtin:micro
  dtype: float32
  device: cpu
quantization:
  type: nf4
  double_quant: true
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
        testing::run_command("QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache " +
                                 qtrain_binary() + " " + dir_.file("recipe.yaml") + " " + args,
                             &captured);
    if (out) *out = captured;
    return code;
  }

  testing::ScratchDir dir_{"qtrain-shard-cli"};
};

TEST_F(ShardedBaseCli, ShardTrainsLikeOneProcessAndLikeDdpAndHoldsHalfTheBase) {
  const std::string one = dir_.file("one"), ddp = dir_.file("ddp"), shard = dir_.file("shard");
  std::string out_one, out_ddp, out_shard;
  ASSERT_EQ(run("output.dir=" + one + " training.grad_accum_steps=2", &out_one), 0) << out_one;
  ASSERT_EQ(run("output.dir=" + ddp + " --nproc 2", &out_ddp), 0) << out_ddp;
  ASSERT_EQ(run("output.dir=" + shard + " distributed.strategy=shard --nproc 2", &out_shard), 0)
      << out_shard;

  const auto l_one = testing::metric_values(one, "loss"),
             l_ddp = testing::metric_values(ddp, "loss"),
             l_shard = testing::metric_values(shard, "loss");
  ASSERT_EQ(l_one.size(), 6u);
  ASSERT_EQ(l_ddp.size(), 6u);
  ASSERT_EQ(l_shard.size(), 6u);
  for (size_t i = 0; i < l_one.size(); ++i) {
    EXPECT_NEAR(l_shard[i], l_one[i], 1e-4) << "step " << i + 1;
    EXPECT_NEAR(l_shard[i], l_ddp[i], 1e-4) << "step " << i + 1;
  }
  EXPECT_LT(max_adapter_diff(one + "/adapter", shard + "/adapter"), 1e-4);
  EXPECT_LT(max_adapter_diff(ddp + "/adapter", shard + "/adapter"), 1e-4);
  EXPECT_GT(max_adapter_diff(shard + "/checkpoints/step-00000003", shard + "/adapter"), 1e-3)
      << "the adapters barely trained; the comparison says little";

  // Loading: each rank read and quantized half the projections and never held the whole base.
  const ShardLog log = parse_shard_log(out_shard);
  ASSERT_EQ(log.projections, 14) << out_shard;  // 2 layers x 7 projections
  EXPECT_EQ(log.whole, 2 * log.shard);
  EXPECT_GE(log.whole, log.used);  // padding only
  EXPECT_LT(log.whole - log.used, log.projections * 2);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(log.produced[r], 7) << out_shard;
    EXPECT_EQ(log.resident[r], log.shard);
    EXPECT_GE(log.peak_held[r], log.shard);
    EXPECT_LT(log.peak_held[r], log.used * 3 / 4) << "rank " << r << " held the whole base";
  }
  // Every projection's quantized bytes were made exactly once, by one of the ranks (nbytes()
  // also counts the nested offset float; the layout, 16-byte alignment).
  const int64_t made = log.produced_bytes[0] + log.produced_bytes[1];
  EXPECT_LE(made, log.used + 4 * log.projections);
  EXPECT_GE(made, log.used - 15 * 6 * log.projections);

  // Residency, measured on each rank's live tensors.
  const auto rows = testing::metrics_rows_with(shard, "resident_base_bytes_per_rank");
  ASSERT_EQ(rows.size(), 6u);
  const std::vector<int64_t> per_rank = rows[0]["resident_base_bytes_per_rank"];
  ASSERT_EQ(per_rank.size(), 2u);
  for (int64_t bytes : per_rank) {
    EXPECT_EQ(bytes, log.shard) << "the whole weights were not freed, or shards are shared";
  }
  EXPECT_EQ(rows[5]["resident_base_bytes"].get<int64_t>(), log.shard);

  // Traffic: every projection gathered 3 times per micro-batch, receiving its other half.
  const int64_t expected = log.whole * (2 - 1) / 2 * 3 * 1;
  for (const auto& row : rows) {
    EXPECT_EQ(row["gathered_bytes"].get<int64_t>(), expected) << row.dump();
    // At most the projection in use and the prefetched one: less than one layer (7) of the 2.
    EXPECT_GT(row["peak_gathered_bytes"].get<int64_t>(), 0);
    EXPECT_LT(row["peak_gathered_bytes"].get<int64_t>(), log.whole / 2);
  }
}

TEST_F(ShardedBaseCli, AShardedResumeContinuesTheSameLosses) {
  const std::string whole = dir_.file("whole"), split = dir_.file("split");
  const std::string args = " adapter.dropout=0.1 distributed.strategy=shard --nproc 2";
  std::string out;
  ASSERT_EQ(run("output.dir=" + whole + args, &out), 0) << out;
  ASSERT_EQ(run("output.dir=" + split + args + " --stop-after 3", &out), 75) << out;
  ASSERT_EQ(run("output.dir=" + split + args + " --resume", &out), 0) << out;
  const auto expected = testing::metric_values(whole, "loss"),
             resumed = testing::metric_values(split, "loss");
  ASSERT_EQ(expected.size(), 6u);
  ASSERT_EQ(resumed.size(), 6u);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_DOUBLE_EQ(resumed[i], expected[i]) << "step " << i + 1;
  }
  EXPECT_EQ(max_adapter_diff(whole + "/adapter", split + "/adapter"), 0.0);
}

TEST_F(ShardedBaseCli, AKilledPeerMakesTheSurvivorExitWithCode9) {
  const std::string dir = dir_.file("killed");
  const int port = testing::free_loopback_port();
  auto start_rank = [&](int rank) {
    const std::string log = dir_.file("rank" + std::to_string(rank) + ".log");
    const pid_t pid = fork();
    if (pid == 0) {
      setenv("QTRAIN_CACHE_DIR", (testing::binary_dir() + "/test-cache").c_str(), 1);
      setenv("RANK", std::to_string(rank).c_str(), 1);
      setenv("WORLD_SIZE", "2", 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      setenv("OMP_NUM_THREADS", "1", 1);
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<std::string> args = {"qtrain",
                                       dir_.file("recipe.yaml"),
                                       "output.dir=" + dir,
                                       "training.max_steps=100000",
                                       "output.save_every=0",
                                       "distributed.strategy=shard",
                                       "distributed.timeout_s=60"};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(qtrain_binary().c_str(), argv.data());
      _exit(127);
    }
    return pid;
  };
  const pid_t rank0 = start_rank(0), rank1 = start_rank(1);
  const auto deadline = Clock::now() + std::chrono::minutes(3);
  while (testing::metric_values(dir, "loss").size() < 2 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GE(testing::metric_values(dir, "loss").size(), 2u)
      << testing::read_file(dir_.file("rank0.log"));
  kill(rank1, SIGKILL);
  int code = -1;
  const auto limit = Clock::now() + std::chrono::seconds(90);
  while (Clock::now() < limit) {
    int status = 0;
    if (waitpid(rank0, &status, WNOHANG) == rank0) {
      code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (code < 0) {
    kill(rank0, SIGKILL);
    waitpid(rank0, nullptr, 0);
  }
  waitpid(rank1, nullptr, 0);
  const std::string log = testing::read_file(dir_.file("rank0.log"));
  EXPECT_EQ(code, 9) << log;
  EXPECT_NE(log.find("a peer rank died"), std::string::npos) << log;
}

TEST_F(ShardedBaseCli, ShardNeedsAQuantizedBaseAndAKnownStrategy) {
  std::string out;
  EXPECT_EQ(run("output.dir=" + dir_.file("none") +
                    " quantization.type=none quantization.double_quant=false "
                    "distributed.strategy=shard --nproc 2",
                &out),
            3)
      << out;
  EXPECT_NE(out.find("which quantization.type none does not make; use distributed.strategy ddp"),
            std::string::npos)
      << out;
  EXPECT_EQ(run("output.dir=" + dir_.file("bogus") + " distributed.strategy=fsdp", &out), 3) << out;
  EXPECT_NE(out.find("expected one of: ddp, shard"), std::string::npos) << out;
}

}  // namespace
}  // namespace qtrain

// The distributed launch environment: torchrun-style and Slurm variables, Slurm hostlists, and
// the errors for values that cannot describe a rank.
#include "core/error.h"
#include "trainer/distributed/launch_env.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace qtrain {
namespace {

LaunchEnv parse(const std::map<std::string, std::string>& vars) {
  return launch_env_from([&](const char* name) -> const char* {
    const auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(LaunchEnv, NoLauncherIsOneProcess) {
  const LaunchEnv env = parse({});
  EXPECT_FALSE(env.distributed());
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
}

TEST(LaunchEnv, TorchrunVariables) {
  const LaunchEnv env = parse({{"RANK", "5"},
                               {"WORLD_SIZE", "8"},
                               {"LOCAL_RANK", "1"},
                               {"MASTER_ADDR", "node7"},
                               {"MASTER_PORT", "29611"}});
  EXPECT_TRUE(env.distributed());
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "node7");
  EXPECT_EQ(env.master_port, 29611);
  EXPECT_EQ(env.source, "torchrun environment");
}

TEST(LaunchEnv, SlurmVariablesDeriveTheRendezvous) {
  const LaunchEnv env = parse({{"SLURM_PROCID", "9"},
                               {"SLURM_NTASKS", "16"},
                               {"SLURM_LOCALID", "1"},
                               {"SLURM_JOB_NODELIST", "gpu[007-008]"},
                               {"SLURM_JOB_ID", "4242424"}});
  EXPECT_EQ(env.rank, 9);
  EXPECT_EQ(env.world_size, 16);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "gpu007");
  EXPECT_EQ(env.master_port, 15000 + 4242424 % 20000);
  EXPECT_EQ(env.source, "Slurm");
}

TEST(LaunchEnv, MasterVariablesOverrideSlurmsAndTorchrunWinsOverSlurm) {
  const LaunchEnv slurm = parse({{"SLURM_PROCID", "0"},
                                 {"SLURM_NTASKS", "2"},
                                 {"SLURM_JOB_NODELIST", "a1,a2"},
                                 {"SLURM_JOB_ID", "17"},
                                 {"MASTER_ADDR", "10.0.0.3"},
                                 {"MASTER_PORT", "40000"}});
  EXPECT_EQ(slurm.master_addr, "10.0.0.3");
  EXPECT_EQ(slurm.master_port, 40000);
  // torchrun inside a Slurm allocation: its own ranks, not the allocation's tasks
  const LaunchEnv both =
      parse({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}, {"RANK", "3"}, {"WORLD_SIZE", "4"}});
  EXPECT_EQ(both.rank, 3);
  EXPECT_EQ(both.world_size, 4);
  EXPECT_EQ(both.local_rank, 3);  // LOCAL_RANK unset: the rank (one node)
}

TEST(LaunchEnv, FirstHostOfSlurmHostlists) {
  EXPECT_EQ(first_slurm_host("node1"), "node1");
  EXPECT_EQ(first_slurm_host("node1,node2"), "node1");
  EXPECT_EQ(first_slurm_host("gpu[003-010,012],cpu1"), "gpu003");
  EXPECT_EQ(first_slurm_host("gpu[12,14]"), "gpu12");
  EXPECT_EQ(first_slurm_host("rack1-n[0007-0009]-ib"), "rack1-n0007-ib");
  EXPECT_EQ(first_slurm_host("login,gpu[1-2]"), "login");
  EXPECT_THROW(first_slurm_host("gpu[1-2"), Error);
}

TEST(LaunchEnv, BadValuesNameTheVariable) {
  auto message = [](const std::map<std::string, std::string>& vars) {
    try {
      parse(vars);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"RANK", "one"}, {"WORLD_SIZE", "2"}}).find("RANK='one'"), std::string::npos);
  EXPECT_NE(message({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("not a valid rank"),
            std::string::npos);
  EXPECT_NE(message({{"RANK", "0"}}).find("WORLD_SIZE"), std::string::npos);
  EXPECT_NE(message({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}})
                .find("MASTER_PORT=70000"),
            std::string::npos);
}

TEST(LaunchEnv, EachRankTakesItsLocalGpuAndAPinnedGpuIsRefused) {
  const LaunchEnv single = parse({});
  EXPECT_EQ(device_for_rank("cuda:3", single, true), "cuda:3");
  EXPECT_EQ(device_for_rank("auto", single, true), "auto");
  const LaunchEnv rank = parse({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}});
  EXPECT_EQ(device_for_rank("cuda", rank, true), "cuda:1");
  EXPECT_EQ(device_for_rank("auto", rank, true), "cuda:1");
  EXPECT_EQ(device_for_rank("auto", rank, false), "auto");
  EXPECT_EQ(device_for_rank("cpu", rank, true), "cpu");
  try {
    device_for_rank("cuda:0", rank, true);
    FAIL() << "cuda:0 under 8 ranks was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.context().field, "model.device");
    EXPECT_NE(std::string(e.what()).find("all 8 ranks on one GPU"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qtrain

// Where this process stands in a distributed job, read from the launcher's environment.
//
// torchrun-style (also what `qtrain --nproc N` sets): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT. Slurm (srun, one task per GPU): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the
// rendezvous host is the first host of SLURM_JOB_NODELIST and the port is derived from
// SLURM_JOB_ID, unless MASTER_ADDR / MASTER_PORT say otherwise. torchrun variables win over
// Slurm's when both are set (torchrun inside an allocation). Neither: a single process.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace qtrain {

struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // the CUDA device this rank uses
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "single process";  // "torchrun environment" | "Slurm" | "single process"

  bool distributed() const { return world_size > 1; }
};

using EnvLookup = std::function<const char*(const char* name)>;

// Throws Error(kConfig) naming the variable for a value that is not a number, a rank outside
// [0, world size) or a port outside 1..65535.
LaunchEnv launch_env_from(const EnvLookup& getenv);
LaunchEnv launch_env();  // from this process's environment

// model.device as rank `env.rank` uses it: "auto" (with CUDA) and "cuda" become
// cuda:LOCAL_RANK, one process per GPU; anything else is kept in a single process. An explicit
// "cuda:N" in a multi-rank job would put every rank on GPU N: Error(kConfig) naming model.device.
std::string device_for_rank(const std::string& recipe_device, const LaunchEnv& env, bool have_cuda);

// The first host of a Slurm hostlist: "gpu[003-010,012],cpu1" -> "gpu003".
std::string first_slurm_host(const std::string& nodelist);

// The rendezvous port of a Slurm job without MASTER_PORT: 15000 + job id mod 20000, so
// concurrent jobs on shared nodes rarely collide (set MASTER_PORT to choose one).
int slurm_port(int64_t job_id);

}  // namespace qtrain

#include "trainer/distributed/launch_env.h"

#include "core/error.h"

#include <cstdlib>

namespace qtrain {
namespace {

int64_t parse_number(const EnvLookup& getenv, const char* name) {
  const char* value = getenv(name);
  const std::string text = value ? value : "";
  size_t used = 0;
  int64_t number = 0;
  try {
    number = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size()) {
    throw_error(ErrorKind::kConfig,
                std::string("environment variable ") + name + "='" + text + "' is not an integer");
  }
  return number;
}

bool is_set(const EnvLookup& getenv, const char* name) {
  const char* value = getenv(name);
  return value != nullptr && *value != '\0';
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  const size_t bracket = nodelist.find('[');
  const size_t comma = nodelist.find(',');
  if (bracket == std::string::npos || (comma != std::string::npos && comma < bracket)) {
    return nodelist.substr(0, comma);
  }
  // prefix[a-b,c...]suffix: the first range's first number, zero padding kept
  const size_t end = nodelist.find_first_of("-,]", bracket);
  const size_t close = nodelist.find(']', bracket);
  if (end == std::string::npos || close == std::string::npos) {
    throw_error(ErrorKind::kConfig, "SLURM_JOB_NODELIST='" + nodelist + "' is not a hostlist");
  }
  const size_t after = close + 1;
  const size_t suffix_end = nodelist.find(',', after);
  return nodelist.substr(0, bracket) + nodelist.substr(bracket + 1, end - bracket - 1) +
         nodelist.substr(after,
                         suffix_end == std::string::npos ? std::string::npos : suffix_end - after);
}

int slurm_port(int64_t job_id) {
  return 15000 + static_cast<int>(job_id % 20000);
}

LaunchEnv launch_env_from(const EnvLookup& getenv) {
  LaunchEnv env;
  if (is_set(getenv, "WORLD_SIZE") || is_set(getenv, "RANK")) {
    env.source = "torchrun environment";
    env.world_size = static_cast<int>(parse_number(getenv, "WORLD_SIZE"));
    env.rank = static_cast<int>(parse_number(getenv, "RANK"));
    env.local_rank = is_set(getenv, "LOCAL_RANK")
                         ? static_cast<int>(parse_number(getenv, "LOCAL_RANK"))
                         : env.rank;
  } else if (is_set(getenv, "SLURM_NTASKS") && is_set(getenv, "SLURM_PROCID")) {
    env.source = "Slurm";
    env.world_size = static_cast<int>(parse_number(getenv, "SLURM_NTASKS"));
    env.rank = static_cast<int>(parse_number(getenv, "SLURM_PROCID"));
    env.local_rank = is_set(getenv, "SLURM_LOCALID")
                         ? static_cast<int>(parse_number(getenv, "SLURM_LOCALID"))
                         : 0;
    if (is_set(getenv, "SLURM_JOB_NODELIST")) {
      env.master_addr = first_slurm_host(getenv("SLURM_JOB_NODELIST"));
    }
    if (is_set(getenv, "SLURM_JOB_ID")) {
      env.master_port = slurm_port(parse_number(getenv, "SLURM_JOB_ID"));
    }
  } else {
    return env;
  }
  if (env.world_size < 1 || env.rank < 0 || env.rank >= env.world_size || env.local_rank < 0) {
    throw_error(ErrorKind::kConfig, "rank " + std::to_string(env.rank) + " (local " +
                                        std::to_string(env.local_rank) + ") of world size " +
                                        std::to_string(env.world_size) + " from the " + env.source +
                                        " is not a valid rank");
  }
  if (is_set(getenv, "MASTER_ADDR")) env.master_addr = getenv("MASTER_ADDR");
  if (is_set(getenv, "MASTER_PORT")) {
    const int64_t port = parse_number(getenv, "MASTER_PORT");
    if (port < 1 || port > 65535) {
      throw_error(ErrorKind::kConfig,
                  "environment variable MASTER_PORT=" + std::to_string(port) + " is not a port");
    }
    env.master_port = static_cast<int>(port);
  }
  return env;
}

std::string device_for_rank(const std::string& recipe_device, const LaunchEnv& env,
                            bool have_cuda) {
  if (!env.distributed()) return recipe_device;
  if ((recipe_device == "auto" && have_cuda) || recipe_device == "cuda") {
    return "cuda:" + std::to_string(env.local_rank);
  }
  if (recipe_device.rfind("cuda:", 0) == 0) {
    throw_error(ErrorKind::kConfig,
                "'" + recipe_device + "' would put all " + std::to_string(env.world_size) +
                    " ranks on one GPU; use cuda (or auto) so that each rank takes "
                    "cuda:LOCAL_RANK, and CUDA_VISIBLE_DEVICES to choose the GPUs",
                {.field = "model.device"});
  }
  return recipe_device;
}

LaunchEnv launch_env() {
  return launch_env_from([](const char* name) { return std::getenv(name); });
}

}  // namespace qtrain

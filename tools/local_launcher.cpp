#include "tools/local_launcher.h"

#include "core/error.h"
#include "core/log.h"
#include "trainer/distributed/launch_env.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace qtrain {
namespace {

volatile sig_atomic_t forwarded_signal = 0;
constexpr int kStoppedExitCode = 75;  // trainer/interrupt.h kInterruptedExitCode

void remember_signal(int signal) {
  forwarded_signal = signal;
}

// A socket listening on 127.0.0.1 at a port the kernel picked; returns {fd, port}.
std::pair<int, int> listen_on_free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw_error(ErrorKind::kIo, std::string("socket: ") + std::strerror(errno));
  const int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      listen(fd, 128) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    const std::string why = std::strerror(errno);
    close(fd);
    throw_error(ErrorKind::kIo, "cannot listen on 127.0.0.1 for the rendezvous: " + why);
  }
  return {fd, ntohs(address.sin_port)};
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return static_cast<int>(ErrorKind::kInternal);
}

[[noreturn]] void exec_rank(int rank, int nproc, int port, int listen_fd,
                            const std::vector<std::string>& args) {
  setpgid(0, 0);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  const std::string r = std::to_string(rank), n = std::to_string(nproc);
  setenv("RANK", r.c_str(), 1);
  setenv("LOCAL_RANK", r.c_str(), 1);
  setenv("WORLD_SIZE", n.c_str(), 1);
  setenv("LOCAL_WORLD_SIZE", n.c_str(), 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  unsetenv("QTRAIN_MASTER_LISTEN_FD");
  // As torchrun does: the ranks share the cores instead of each spinning a thread per core.
  if (!std::getenv("OMP_NUM_THREADS")) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    setenv("OMP_NUM_THREADS", std::to_string(std::max(1u, cores / nproc)).c_str(), 1);
  }
  if (listen_fd >= 0) {
    if (rank == 0) {
      setenv("QTRAIN_MASTER_LISTEN_FD", std::to_string(listen_fd).c_str(), 1);
    } else {
      close(listen_fd);
    }
  }
  std::vector<char*> argv;
  for (const std::string& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  execv("/proc/self/exe", argv.data());
  std::fprintf(stderr, "qtrain --nproc: cannot start rank %d: %s\n", rank, std::strerror(errno));
  _exit(static_cast<int>(ErrorKind::kInternal));
}

}  // namespace

int launch_local_ranks(int nproc, const std::vector<std::string>& args, int grace_seconds) {
  int listen_fd = -1, port = 0;
  if (const char* fixed = std::getenv("MASTER_PORT"); fixed && *fixed) {
    port = launch_env().master_port;  // checked: a number in 1..65535, else Error(kConfig)
  } else {
    std::tie(listen_fd, port) = listen_on_free_port();
  }
  struct sigaction action {};
  action.sa_handler = remember_signal;
  sigemptyset(&action.sa_mask);
  struct sigaction old_int {
  }, old_term{};
  sigaction(SIGINT, &action, &old_int);
  sigaction(SIGTERM, &action, &old_term);

  std::vector<pid_t> pids;
  for (int rank = 0; rank < nproc; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) {
      const int fork_errno = errno;
      for (const pid_t started : pids) kill(started, SIGKILL);
      for (const pid_t started : pids) waitpid(started, nullptr, 0);
      throw_error(ErrorKind::kIo, std::string("fork: ") + std::strerror(fork_errno));
    }
    if (pid == 0) exec_rank(rank, nproc, port, listen_fd, args);
    pids.push_back(pid);
  }
  if (listen_fd >= 0) close(listen_fd);
  log::info("qtrain --nproc ", nproc, ": ranks started (rendezvous 127.0.0.1:", port, ")");

  using Clock = std::chrono::steady_clock;
  std::vector<int> codes(nproc, -1);
  int first_failure = -1, running = nproc;
  Clock::time_point kill_at = Clock::time_point::max();
  bool forwarded = false, killed = false;
  while (running > 0) {
    if (forwarded_signal != 0 && !forwarded) {
      forwarded = true;
      for (int r = 0; r < nproc; ++r) {
        if (codes[r] < 0) kill(pids[r], forwarded_signal);
      }
    }
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (int r = 0; r < nproc; ++r) {
        if (pids[r] != pid) continue;
        codes[r] = exit_code_of(status);
        --running;
        // 75: stopped by a signal after a checkpoint, as the other ranks will be shortly.
        if (codes[r] != 0 && codes[r] != kStoppedExitCode && first_failure < 0) {
          first_failure = r;
          if (running > 0) {
            log::error("qtrain --nproc: rank ", r, " exited with code ", codes[r],
                       "; the other ranks get ", grace_seconds, " s to stop");
          }
          kill_at = Clock::now() + std::chrono::seconds(grace_seconds);
        }
      }
      continue;
    }
    if (!killed && Clock::now() >= kill_at) {
      killed = true;
      for (int r = 0; r < nproc; ++r) {
        if (codes[r] < 0) kill(pids[r], SIGKILL);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (first_failure >= 0) return codes[first_failure];
  const bool stopped = std::find(codes.begin(), codes.end(), kStoppedExitCode) != codes.end();
  return stopped ? kStoppedExitCode : 0;
}

}  // namespace qtrain

// qtrain --nproc N: N data-parallel ranks of this program on this machine, torchrun-style.
//
// Each rank is a child process (its own process group, so a terminal's Ctrl-C reaches only the
// launcher, which forwards it once) with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
// MASTER_ADDR=127.0.0.1 and MASTER_PORT set. The launcher binds the rendezvous port itself and
// hands the listening socket to rank 0 (QTRAIN_MASTER_LISTEN_FD), so no other program can take
// the port in between; MASTER_PORT in the launcher's environment picks a fixed port instead.
// SIGTERM/SIGINT are forwarded to every rank. When a rank fails, the others get `grace_seconds`
// to notice and exit on their own, then are killed.
#pragma once

#include <string>
#include <vector>

namespace qtrain {

// Runs `args` (argv[0] is ignored: the ranks run /proc/self/exe) as `nproc` ranks and returns
// the job's exit code: 0 when every rank succeeded, 75 when they stopped on a signal after a
// checkpoint, else the first failing rank's code (128 + signal for a rank killed by a signal).
int launch_local_ranks(int nproc, const std::vector<std::string>& args, int grace_seconds);

}  // namespace qtrain

// Cluster pre-emption (SIGTERM) and Ctrl-C (SIGINT): the first signal asks the training loop to
// stop after the current optimizer step and write a checkpoint; a second one kills the process
// the default way.
#pragma once

namespace qtrain {

// Exit code of a run stopped by a signal after saving its checkpoint (EX_TEMPFAIL: try again,
// e.g. requeue with --resume).
inline constexpr int kInterruptedExitCode = 75;

class InterruptGuard {
 public:
  InterruptGuard();   // installs the handlers, clears the flag
  ~InterruptGuard();  // restores the previous handlers
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  static bool requested();
  static int signal_number();  // the signal that asked, 0 if none
};

}  // namespace qtrain

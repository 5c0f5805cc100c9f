#include "trainer/interrupt.h"

#include <csignal>

namespace qtrain {
namespace {

volatile std::sig_atomic_t g_signal = 0;
struct sigaction g_previous_term, g_previous_int;

extern "C" void on_stop_signal(int signal_number) {
  g_signal = signal_number;
  // A second signal takes the default action (terminate) immediately.
  std::signal(signal_number, SIG_DFL);
}

}  // namespace

InterruptGuard::InterruptGuard() {
  g_signal = 0;
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, &g_previous_term);
  sigaction(SIGINT, &action, &g_previous_int);
}

InterruptGuard::~InterruptGuard() {
  sigaction(SIGTERM, &g_previous_term, nullptr);
  sigaction(SIGINT, &g_previous_int, nullptr);
}

bool InterruptGuard::requested() {
  return g_signal != 0;
}
int InterruptGuard::signal_number() {
  return g_signal;
}

}  // namespace qtrain

#include "trainer/progress.h"

#include <cmath>
#include <cstdio>

namespace qtrain {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto total = static_cast<int64_t>(std::llround(seconds));
  const int64_t h = total / 3600, m = (total / 60) % 60, s = total % 60;
  char text[32];
  if (h > 0) {
    std::snprintf(text, sizeof(text), "%lld:%02lld:%02lld", static_cast<long long>(h),
                  static_cast<long long>(m), static_cast<long long>(s));
  } else {
    std::snprintf(text, sizeof(text), "%lld:%02lld", static_cast<long long>(m),
                  static_cast<long long>(s));
  }
  return text;
}

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  if (unit == 0) {
    std::snprintf(text, sizeof(text), "%lld B", static_cast<long long>(bytes));
  } else {
    std::snprintf(text, sizeof(text), value < 10 ? "%.2f %s" : "%.0f %s", value, units[unit]);
  }
  return text;
}

std::string format_progress(const StepReport& r) {
  char throughput[32];
  if (r.tokens_per_second >= 1000) {
    std::snprintf(throughput, sizeof(throughput), "%.1fk", r.tokens_per_second / 1000);
  } else {
    std::snprintf(throughput, sizeof(throughput), "%.0f", r.tokens_per_second);
  }
  const double eta = r.seconds_per_step * static_cast<double>(r.total - r.step);
  char text[256];
  std::snprintf(text, sizeof(text),
                "step %lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %s tok/s | %.2f s/step | "
                "ETA %s | mem %s",
                static_cast<long long>(r.step), static_cast<long long>(r.total), r.loss, r.lr,
                r.grad_norm, throughput, r.seconds_per_step, format_duration(eta).c_str(),
                format_bytes(r.memory_bytes).c_str());
  return text;
}

}  // namespace qtrain

#include "trainer/step_profiler.h"

#include "core/atomic_file.h"
#include "core/error.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <vector>

namespace qtrain {
namespace {

namespace kineto = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

constexpr int kTopRows = 30;

std::set<ActivityType> activities(bool cuda) {
  std::set<ActivityType> out = {ActivityType::CPU};
  if (cuda) out.insert(ActivityType::CUDA);
  return out;
}

ProfilerConfig config() {
  return ProfilerConfig(ProfilerState::KINETO);
}

struct Totals {
  int64_t calls = 0;
  uint64_t ns = 0;
};

// name -> calls and summed duration, ranked by duration.
std::vector<std::pair<std::string, Totals>> ranked(const std::map<std::string, Totals>& by_name) {
  std::vector<std::pair<std::string, Totals>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  return rows;
}

void write_table(std::ostringstream& out, const std::string& heading,
                 const std::map<std::string, Totals>& by_name, uint64_t total_ns) {
  out << "\n" << heading << "\n";
  char line[64];
  std::snprintf(line, sizeof line, "%12s %7s %7s  ", "ms", "%", "calls");
  out << line << "name\n";
  int shown = 0;
  for (const auto& [name, t] : ranked(by_name)) {
    if (shown++ == kTopRows) break;
    std::snprintf(
        line, sizeof line, "%12.3f %6.1f%% %7lld  ", static_cast<double>(t.ns) / 1e6,
        total_ns ? 100.0 * static_cast<double>(t.ns) / static_cast<double>(total_ns) : 0.0,
        static_cast<long long>(t.calls));
    out << line << name << "\n";
  }
}

}  // namespace

int64_t requested_profile_step() {
  const char* value = std::getenv("QTRAIN_PROFILE_STEP");
  if (value == nullptr || *value == '\0') return 0;
  const std::string text = value;
  const bool digits = text.size() <= 12 && std::all_of(text.begin(), text.end(),
                                                       [](char c) { return c >= '0' && c <= '9'; });
  const int64_t step = digits ? std::stoll(text) : 0;
  if (step <= 0) {
    throw_error(ErrorKind::kConfig,
                "QTRAIN_PROFILE_STEP must be a step number from 1 (got '" + text + "')",
                {.field = "QTRAIN_PROFILE_STEP"});
  }
  return step;
}

StepProfiler::StepProfiler(bool cuda) : cuda_(cuda) {
  kineto::prepareProfiler(config(), activities(cuda_));
  kineto::enableProfiler(config(), activities(cuda_));
  running_ = true;
}

StepProfiler::~StepProfiler() {
  if (running_) kineto::disableProfiler();
}

std::string StepProfiler::finish(const std::string& prefix, const std::string& title) {
  running_ = false;
  const std::unique_ptr<kineto::ProfilerResult> result = kineto::disableProfiler();
  std::map<std::string, Totals> operators;
  std::map<std::string, Totals> kernels;
  uint64_t kernel_ns = 0;
  uint64_t cpu_begin = UINT64_MAX;
  uint64_t cpu_end = 0;
  for (const kineto::KinetoEvent& e : result->events()) {
    const uint64_t ns = e.durationNs();
    if (e.deviceType() == c10::DeviceType::CUDA) {
      Totals& t = kernels[e.name()];
      ++t.calls;
      t.ns += ns;
      kernel_ns += ns;
    } else {
      Totals& t = operators[e.name()];
      ++t.calls;
      t.ns += ns;
      cpu_begin = std::min(cpu_begin, e.startNs());
      cpu_end = std::max(cpu_end, e.endNs());
    }
  }
  std::ostringstream out;
  const uint64_t span_ns = cpu_end > cpu_begin ? cpu_end - cpu_begin : 0;
  out << title << "\n"
      << result->events().size() << " events over " << static_cast<double>(span_ns) / 1e6
      << " ms of CPU time span";
  if (cuda_) out << ", " << static_cast<double>(kernel_ns) / 1e6 << " ms of CUDA kernels";
  out << "\n";
  if (cuda_) write_table(out, "CUDA kernels by device time", kernels, kernel_ns);
  write_table(out,
              "CPU operators by inclusive time, % of the span (nested operators count in their "
              "callers too)",
              operators, span_ns);
  const std::string summary = prefix + ".txt";
  write_file_atomically(summary, out.str());
  result->save(prefix + ".trace.json");
  return summary;
}

}  // namespace qtrain

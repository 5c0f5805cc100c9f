// qexport --check: how much of the fine-tune an export keeps, as held-out loss. The trained model
// (the base quantized as the run trained it, plus the exported adapter: what qeval --recipe
// evaluates for a run) and the export loaded back as its users load it (export/export_readback.h)
// are evaluated on the run's own held-out split, exactly as training evaluates
// (trainer/evaluate.h), on the same device in the run's compute dtype.
//
// When it runs: --check always (a bare adapter directory, with no held-out split, is then an
// error); --no-check never; by default when the input is a run with a held-out split that can be
// read here and parameters x held-out tokens is at most kAutoCheckBudget on a CPU (1e12: both
// passes took 15-22 s at 2e11 for builtin:small, 17M parameters and 150 held-out examples, on one
// core of a shared 2-core machine, so the bound is a minute or two there and seconds on a
// workstation) or kAutoCheckBudgetCuda on a GPU. The adapter format is the trained adapter
// itself and is never checked.
#pragma once

#include "export/export_formats.h"
#include "export/export_source.h"

#include <cstdint>
#include <string>

namespace qtrain {

enum class ExportCheckMode { kAuto, kOn, kOff };

// Parameters x held-out tokens evaluated without being asked, on a CPU (kAutoCheckBudget) and on
// a CUDA device (kAutoCheckBudgetCuda).
constexpr double kAutoCheckBudget = 1e12;
constexpr double kAutoCheckBudgetCuda = 1e14;

struct HeldOutLoss {
  double loss = 0;        // mean next-token loss over the split's loss tokens
  double perplexity = 0;  // exp(loss)
};

struct ExportCheck {
  bool ran = false;
  std::string note;  // why it did not run, when it did not
  HeldOutLoss trained, exported;
  std::string trained_model;         // "the base at nf4 + the LoRA adapter", ...
  std::string exported_model;        // how the export was read back
  int64_t examples = 0, tokens = 0;  // held-out examples and their loss tokens
  double parameter_tokens = 0;       // parameters x held-out tokens: the size of the job
  std::string device, dtype;
  double seconds = 0;
  std::string report_path;  // where the JSON report was written
};

// Before exporting: Error(kUsage) when kOn cannot run because `input` is no run directory (so a
// doomed --check fails before the export is written).
void preflight_export_check(const std::string& input, ExportCheckMode mode);

// Checks the export of `source` (opened from `input`) written to `output` with `options`, and
// writes the report: <output>/export_check.json for a directory, <output>.export_check.json
// beside a GGUF file (an old one there is removed when the check does not run). Throws
// Error(kUsage) when kOn cannot run (no run directory, no held-out split), the data loaders'
// errors in kOn mode, and the readers' errors, prefixed with "the export is written, but checking
// it failed: ".
ExportCheck check_export(const std::string& input, const ExportSource& source,
                         const std::string& output, const ExportOptions& options,
                         ExportCheckMode mode);

// The lines qexport prints (each starting with two spaces, ending in '\n').
std::string export_check_text(const ExportCheck& check);

}  // namespace qtrain

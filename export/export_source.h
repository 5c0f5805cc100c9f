// What qexport reads: a finished (or interrupted) qtrain run directory, or a bare PEFT adapter
// directory, resolved to the base model it was trained on and the adapter itself.
//
//   run directory      <run>/recipe.yaml names the base (model.path) and how it was quantized
//                      while training; the adapter is <run>/adapter, else the newest checkpoint.
//   adapter directory  adapter_config.json + adapter_model.safetensors; the base is --base, else
//                      the adapter's base_model_name_or_path.
#pragma once

#include "peft/peft_files.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {

// How the base's projections were quantized while the adapter trained (the recipe's
// quantization section).
struct TrainedQuantization {
  std::string type = "none";  // nf4 | fp4 | int8 | int4 | none
  int64_t blocksize = 64;
  bool double_quant = false;
  int64_t group_size = 64;  // int4
  std::vector<std::string> skip_modules = {"lm_head"};
};

struct ExportSource {
  std::string model_dir;    // the base: an HF directory (dense or bitsandbytes 4-bit)
  std::string adapter_dir;  // where the adapter files were read
  LoadedAdapter adapter;
  int64_t qalora_group_size = 0;  // > 0: a QA-LoRA adapter (pooled lora_A [r, in/g])
  // From the run's recipe; nullopt for a bare adapter directory (then only QA-LoRA's int4 base is
  // known, from qalora_group_size).
  std::optional<TrainedQuantization> trained_on;
};

// Opens `path` as a run or adapter directory. `base_override` (non-empty) replaces the base the
// files name; "builtin:<preset>" names resolve like model.path. Throws Error(kIo) naming the path
// when it is neither, when a run has no adapter yet, or when no base is known; plus whatever
// reading the recipe or the adapter throws.
ExportSource open_export_source(const std::string& path, const std::string& base_override = "");

}  // namespace qtrain

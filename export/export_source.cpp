#include "export/export_source.h"

#include "core/error.h"
#include "core/log.h"
#include "formats/checkpoint/checkpoint_dir.h"
#include "models/model_dir.h"
#include "trainer/recipe/recipe.h"

#include <filesystem>

namespace qtrain {
namespace fs = std::filesystem;
namespace {

// <run>/adapter when the run finished, else the checkpoint a resume would take (the one `latest`
// names when it is complete, else the newest complete one).
std::string run_adapter_dir(const fs::path& run) {
  if (fs::exists(run / "adapter" / "adapter_config.json")) return (run / "adapter").string();
  if (const auto checkpoint = latest_checkpoint(run.string())) {
    log::warn("the run has no final adapter; exporting its newest checkpoint ",
              fs::path(*checkpoint).filename().string());
    return *checkpoint;
  }
  throw_error(ErrorKind::kIo, "the run has no adapter yet (no adapter/ and no checkpoint)",
              {.file = run.string()});
}

}  // namespace

ExportSource open_export_source(const std::string& path, const std::string& base_override) {
  const fs::path dir(path);
  if (!fs::is_directory(dir)) throw_error(ErrorKind::kIo, "no such directory", {.file = path});
  ExportSource source;
  std::string base = base_override;
  if (fs::exists(dir / "recipe.yaml")) {
    const Recipe recipe = load_recipe((dir / "recipe.yaml").string());
    source.adapter_dir = run_adapter_dir(dir);
    if (base.empty()) base = recipe.model.path;
    const auto& q = recipe.quantization;
    source.trained_on = TrainedQuantization{.type = q.type,
                                            .blocksize = q.blocksize,
                                            .double_quant = q.double_quant,
                                            .group_size = q.group_size,
                                            .skip_modules = q.skip_modules};
  } else if (fs::exists(dir / "adapter_config.json")) {
    source.adapter_dir = path;
  } else {
    throw_error(ErrorKind::kIo,
                "neither a qtrain run (recipe.yaml) nor a PEFT adapter (adapter_config.json)",
                {.file = path});
  }
  source.adapter = load_peft_adapter(source.adapter_dir);
  source.qalora_group_size = source.adapter.qalora_group_size;
  if (base.empty()) base = source.adapter.base_model_name_or_path;
  if (base.empty()) {
    throw_error(
        ErrorKind::kIo, "the adapter names no base model; pass --base DIR",
        {.file = source.adapter_dir + "/adapter_config.json", .field = "base_model_name_or_path"});
  }
  try {
    source.model_dir = resolve_model_dir(base);
  } catch (const Error& e) {
    throw Error(ErrorKind::kIo, "base model not found: " + base + " (pass --base DIR)",
                {.file = source.adapter_dir});
  }
  return source;
}

}  // namespace qtrain

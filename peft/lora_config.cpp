#include "peft/lora_config.h"

#include "core/error.h"

#include <cmath>

namespace qtrain {

double LoraConfig::scaling() const {
  return rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

void LoraConfig::validate() const {
  auto fail = [](const std::string& field, const std::string& message) {
    throw_error(ErrorKind::kConfig, message, {.field = field});
  };
  if (r < 1) fail("r", "LoRA rank must be >= 1, got " + std::to_string(r));
  if (!(alpha > 0)) fail("alpha", "LoRA alpha must be > 0, got " + std::to_string(alpha));
  if (!(dropout >= 0 && dropout < 1)) {
    fail("dropout", "LoRA dropout must lie in [0, 1), got " + std::to_string(dropout));
  }
  if (init != "kaiming" && init != "gaussian") {
    fail("init", "unknown LoRA init '" + init + "' (expected kaiming or gaussian)");
  }
  if (!at::isFloatingType(dtype)) fail("dtype", "LoRA adapters need a floating-point dtype");
  if (target_regex.empty()) {
    if (target_modules.empty()) fail("target_modules", "no target modules given");
    for (const auto& entry : target_modules) {
      if (entry.empty()) fail("target_modules", "empty target module name");
      if (entry == "all-linear" && target_modules.size() != 1) {
        fail("target_modules", "\"all-linear\" cannot be combined with other entries");
      }
    }
  }
}

}  // namespace qtrain

#include "models/stored_precision.h"

#include "core/error.h"
#include "core/log.h"
#include "formats/bnb/bnb_checkpoint.h"
#include "quant/quantized_tensor.h"

#include <filesystem>

namespace qtrain {

std::optional<std::string> stored_precision(const std::string& dir) {
  // No readable config.json: not a 4-bit directory; the model loader reports what is wrong.
  std::error_code ec;
  if (!std::filesystem::is_regular_file(std::filesystem::path(dir) / "config.json", ec)) {
    return std::nullopt;
  }
  const auto config = read_bnb_quantization_config(dir);
  if (!config) return std::nullopt;
  return quant_type_name(config->type);
}

std::string precision_for_model_dir(const std::string& dir, const std::string& requested,
                                    const std::string& fallback, const std::string& flag) {
  const auto stored = stored_precision(dir);
  if (!stored) return requested.empty() ? fallback : requested;
  if (!requested.empty() && requested != *stored) {
    throw_error(ErrorKind::kUsage, dir + " holds bitsandbytes " + *stored +
                                       " weights (config.json quantization_config) and loads at " +
                                       *stored + " only; drop " + flag + " " + requested +
                                       " or pass " + flag + " " + *stored);
  }
  if (requested.empty() && fallback != *stored) {
    log::info(dir, " holds bitsandbytes ", *stored, " weights: loading them as stored");
  }
  return *stored;
}

}  // namespace qtrain

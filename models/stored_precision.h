// The precision a model directory's weights are stored at, when that is the only one they load
// at: a bitsandbytes 4-bit directory (a `*-bnb-4bit` model, or one `qexport --format nf4` wrote)
// holds 4-bit codes, not full-precision weights, so qeval, qgen and qexport load it as it is.
#pragma once

#include <optional>
#include <string>

namespace qtrain {

// "nf4" or "fp4" when `dir`/config.json has a bitsandbytes quantization_config with
// load_in_4bit (quant_method bitsandbytes); nullopt for a directory without a
// quantization_config. Throws what read_bnb_quantization_config throws for another kind of
// quantization_config (Error(kConfig)/kUnsupported naming config.json and the field).
std::optional<std::string> stored_precision(const std::string& dir);

// The precision to load `dir` at. `requested` is what the command line asked for ("" when the
// flag was not given), `fallback` the tool's default then. A dense directory takes `requested`,
// else `fallback`. A 4-bit directory takes its stored precision: when `requested` names another,
// Error(kUsage) naming `flag` and the stored one (the weights cannot be loaded at a precision
// they no longer have; an explicit contradictory flag is a mistake worth stopping on).
std::string precision_for_model_dir(const std::string& dir, const std::string& requested,
                                    const std::string& fallback, const std::string& flag);

}  // namespace qtrain

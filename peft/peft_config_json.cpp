#include "peft/peft_config_json.h"

#include "core/error.h"

#include <cmath>

namespace qtrain {
namespace {

using nlohmann::json;

[[noreturn]] void field_error(ErrorKind kind, const std::string& file, const std::string& field,
                              const std::string& message) {
  throw_error(kind, message, {.file = file, .field = field});
}

bool present(const json& j, const char* key) {
  return j.contains(key) && !j.at(key).is_null();
}

// True when the field holds something other than null, false, {} or [].
bool set_to_something(const json& j, const char* key) {
  if (!present(j, key)) return false;
  const json& v = j.at(key);
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_object() || v.is_array()) return !v.empty();
  return true;
}

bool get_bool(const json& j, const char* key, const std::string& file, bool fallback) {
  if (!present(j, key)) return fallback;
  if (!j.at(key).is_boolean()) {
    field_error(ErrorKind::kConfig, file, key, "expected true or false, got " + j.at(key).dump());
  }
  return j.at(key).get<bool>();
}

double get_number(const json& j, const char* key, const std::string& file, double fallback) {
  if (!present(j, key)) return fallback;
  if (!j.at(key).is_number()) {
    field_error(ErrorKind::kConfig, file, key, "expected a number, got " + j.at(key).dump());
  }
  return j.at(key).get<double>();
}

std::string get_string(const json& j, const char* key, const std::string& file,
                       const std::string& fallback) {
  if (!present(j, key)) return fallback;
  if (!j.at(key).is_string()) {
    field_error(ErrorKind::kConfig, file, key, "expected a string, got " + j.at(key).dump());
  }
  return j.at(key).get<std::string>();
}

void reject_if_set(const json& j, const char* key, const std::string& file,
                   const std::string& why) {
  if (set_to_something(j, key)) {
    field_error(ErrorKind::kUnsupported, file, key,
                why + " (" + key + " = " + j.at(key).dump() + ")");
  }
}

}  // namespace

json peft_config_json(const LoraConfig& config, const json& target_modules,
                      const std::string& base_model_name_or_path) {
  json alpha = config.alpha;
  if (config.alpha == std::floor(config.alpha) && std::abs(config.alpha) < 1e15) {
    alpha = static_cast<int64_t>(config.alpha);  // PEFT's lora_alpha is an int
  }
  return json{
      {"alpha_pattern", json::object()},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path",
       base_model_name_or_path.empty() ? json(nullptr) : json(base_model_name_or_path)},
      {"bias", "none"},
      {"exclude_modules", nullptr},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", config.init == "gaussian" ? json("gaussian") : json(true)},
      {"layer_replication", nullptr},
      {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},
      {"loftq_config", json::object()},
      {"lora_alpha", alpha},
      {"lora_bias", false},
      {"lora_dropout", config.dropout},
      {"megatron_config", nullptr},
      {"megatron_core", "megatron.core"},
      {"modules_to_save", nullptr},
      {"peft_type", "LORA"},
      {"qalora_group_size", 16},
      {"r", config.r},
      {"rank_pattern", json::object()},
      {"revision", nullptr},
      {"target_modules", target_modules},
      {"task_type", "CAUSAL_LM"},
      {"use_dora", false},
      {"use_qalora", false},
      {"use_rslora", config.rslora},
  };
}

std::string dump_peft_config(const json& config) {
  // nlohmann's objects are std::maps, so keys come out sorted like sort_keys=True.
  return config.dump(2, ' ', /*ensure_ascii=*/true);
}

LoraConfig lora_config_from_peft_json(const json& j, const std::string& file) {
  if (!j.is_object()) {
    throw_error(ErrorKind::kFormat, "adapter config must be a JSON object", {.file = file});
  }
  const std::string peft_type = get_string(j, "peft_type", file, "");
  if (peft_type != "LORA") {
    field_error(ErrorKind::kUnsupported, file, "peft_type",
                "only LoRA adapters are supported, this one is " +
                    (peft_type.empty() ? std::string("unspecified") : peft_type));
  }
  const std::string task = get_string(j, "task_type", file, "CAUSAL_LM");
  if (task != "CAUSAL_LM") {
    field_error(ErrorKind::kUnsupported, file, "task_type",
                "only CAUSAL_LM adapters are supported, this one is " + task);
  }
  reject_if_set(j, "use_dora", file, "DoRA adapters are not supported");
  reject_if_set(j, "fan_in_fan_out", file,
                "fan_in_fan_out (Conv1D/GPT-2 style weights) is not supported");
  const std::string bias = get_string(j, "bias", file, "none");
  if (bias != "none") {
    field_error(ErrorKind::kUnsupported, file, "bias",
                "trained biases are not supported (bias = \"" + bias + "\")");
  }
  reject_if_set(j, "lora_bias", file, "a lora_B bias is not supported");
  reject_if_set(j, "modules_to_save", file, "fully trained extra modules are not supported");
  reject_if_set(j, "rank_pattern", file, "per-module ranks are not supported");
  reject_if_set(j, "alpha_pattern", file, "per-module alphas are not supported");
  reject_if_set(j, "layer_replication", file, "layer replication is not supported");
  reject_if_set(j, "target_parameters", file, "LoRA on raw parameters is not supported");
  reject_if_set(j, "trainable_token_indices", file, "trainable tokens are not supported");

  LoraConfig c;
  if (present(j, "r")) {
    if (!j.at("r").is_number_integer() || j.at("r").get<int64_t>() < 1) {
      field_error(ErrorKind::kConfig, file, "r",
                  "expected an integer >= 1, got " + j.at("r").dump());
    }
    c.r = j.at("r").get<int64_t>();
  } else {
    c.r = 8;  // PEFT's defaults
  }
  c.alpha = get_number(j, "lora_alpha", file, 8);
  if (!(c.alpha > 0)) field_error(ErrorKind::kConfig, file, "lora_alpha", "must be > 0");
  c.dropout = get_number(j, "lora_dropout", file, 0.0);
  if (!(c.dropout >= 0 && c.dropout < 1)) {
    field_error(ErrorKind::kConfig, file, "lora_dropout", "must lie in [0, 1)");
  }
  c.rslora = get_bool(j, "use_rslora", file, false);
  c.init = present(j, "init_lora_weights") && j.at("init_lora_weights") == "gaussian" ? "gaussian"
                                                                                      : "kaiming";

  c.target_modules.clear();
  if (present(j, "target_modules")) {
    const json& t = j.at("target_modules");
    if (t.is_string()) {
      if (t.get<std::string>() == "all-linear") {
        c.target_modules = {"all-linear"};
      } else {
        c.target_regex = t.get<std::string>();
      }
    } else if (t.is_array()) {
      for (const auto& entry : t) {
        if (!entry.is_string()) {
          field_error(ErrorKind::kConfig, file, "target_modules",
                      "expected module names, got " + entry.dump());
        }
        c.target_modules.push_back(entry.get<std::string>());
      }
    } else {
      field_error(ErrorKind::kConfig, file, "target_modules",
                  "expected a list of names or a regex string, got " + t.dump());
    }
  }
  return c;
}

}  // namespace qtrain

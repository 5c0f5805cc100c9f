// libFuzzer target: the JSON configs read from model and adapter directories. The first byte
// picks config.json (ModelConfig, then its consistency checks) or adapter_config.json (PEFT's
// LoRA config); the rest is the file.
#include "core/json_file.h"
#include "models/config.h"
#include "peft/peft_config_json.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool model_config = (data[0] & 1) == 0;
  const std::string path = qtrain::fuzz::write_scratch(
      model_config ? "config.json" : "adapter_config.json", data + 1, size - 1);
  qtrain::fuzz::expect_success_or_error([&] {
    if (model_config) {
      const qtrain::ModelConfig config = qtrain::ModelConfig::from_file(path);
      config.validate(path);
      (void)config.to_json();
    } else {
      (void)qtrain::lora_config_from_peft_json(qtrain::read_json_file(path), path);
    }
  });
  return 0;
}

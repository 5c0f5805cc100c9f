#include "peft/apply_qalora.h"

#include "core/error.h"
#include "core/log.h"
#include "models/int4_linear_slot.h"
#include "peft/qalora_linear.h"
#include "peft/target_modules.h"

#include <ATen/CPUGeneratorImpl.h>

#include <map>

namespace qtrain {

NamedAdapters apply_qalora(CausalLM& model, const LoraConfig& config, int64_t group_size,
                           uint64_t seed) {
  config.validate();
  const std::vector<std::string> targets = select_target_modules(model, config);
  std::map<std::string, std::shared_ptr<LinearSlot>> slots;
  for (auto& [name, slot] : model.named_linears()) slots[name] = slot;
  // Check every target before changing anything.
  std::vector<std::shared_ptr<Int4LinearSlot>> bases;
  for (const auto& name : targets) {
    auto base = std::dynamic_pointer_cast<Int4LinearSlot>(slots.at(name));
    if (!base) {
      throw_error(ErrorKind::kConfig,
                  "qalora needs an int4 base (quantization.type: int4); this projection is not "
                  "an int4 group-quantized linear",
                  {.tensor = name});
    }
    if (base->weight().group_size != group_size) {
      throw_error(ErrorKind::kConfig,
                  "qalora group size " + std::to_string(group_size) +
                      " differs from the int4 base's quantization group size " +
                      std::to_string(base->weight().group_size),
                  {.tensor = name, .field = "group_size"});
    }
    bases.push_back(std::move(base));
  }
  for (auto& p : model.parameters()) p.requires_grad_(false);

  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  NamedAdapters adapters;
  int64_t trainable = 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    auto qalora = std::make_shared<QaLoraLinear>(bases[i], config, group_size, generator);
    model.replace_linear(targets[i], qalora);
    trainable += qalora->lora_A().numel() + qalora->lora_B().numel();
    adapters.emplace_back(targets[i], std::move(qalora));
  }
  log::info("QA-LoRA r=", config.r, " alpha=", config.alpha, " group ", group_size, " on ",
            adapters.size(), " projections: ", trainable, " trainable parameters");
  return adapters;
}

}  // namespace qtrain

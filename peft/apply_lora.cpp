#include "peft/apply_lora.h"

#include "core/error.h"
#include "core/log.h"
#include "peft/lora_linear.h"
#include "peft/target_modules.h"

#include <ATen/CPUGeneratorImpl.h>

#include <map>

namespace qtrain {

NamedAdapters apply_lora(CausalLM& model, const LoraConfig& config, uint64_t seed) {
  const std::vector<std::string> targets = select_target_modules(model, config);
  for (auto& p : model.parameters()) p.requires_grad_(false);

  std::map<std::string, std::shared_ptr<LinearSlot>> slots;
  for (auto& [name, slot] : model.named_linears()) slots[name] = slot;
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  NamedAdapters adapters;
  int64_t trainable = 0;
  for (const auto& name : targets) {
    const auto& base = slots.at(name);
    if (std::dynamic_pointer_cast<AdapterSlot>(base)) {
      throw_error(ErrorKind::kUnsupported, "this projection already carries an adapter",
                  {.tensor = name});
    }
    auto lora = std::make_shared<LoraLinear>(base, config, generator);
    model.replace_linear(name, lora);
    trainable += lora->lora_A().numel() + lora->lora_B().numel();
    adapters.emplace_back(name, std::move(lora));
  }
  log::info("LoRA r=", config.r, " alpha=", config.alpha, config.rslora ? " (rsLoRA)" : "", " on ",
            adapters.size(), " projections: ", trainable, " trainable parameters");
  return adapters;
}

std::vector<at::Tensor> adapter_parameters(const NamedAdapters& adapters) {
  std::vector<at::Tensor> out;
  for (const auto& [name, adapter] : adapters) {
    for (auto& [tensor_name, tensor] : adapter->adapter_tensors()) out.push_back(tensor);
  }
  return out;
}

}  // namespace qtrain

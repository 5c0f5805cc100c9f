#include "trainer/recipe/recipe_keys.h"

#include "trainer/recipe/recipe_fields.h"

#include <algorithm>
#include <map>
#include <numeric>

namespace qtrain {
namespace {

// Names other trainers use for our keys (same section).
const std::map<std::string, std::string>& aliases() {
  static const std::map<std::string, std::string> kAliases = {
      {"model.model_path", "model.path"},
      {"model.name_or_path", "model.path"},
      {"model.torch_dtype", "model.dtype"},
      {"quantization.quant_type", "quantization.type"},
      {"quantization.bnb_4bit_quant_type", "quantization.type"},
      {"quantization.use_double_quant", "quantization.double_quant"},
      {"quantization.bnb_4bit_use_double_quant", "quantization.double_quant"},
      {"quantization.block_size", "quantization.blocksize"},
      {"quantization.llm_int8_skip_modules", "quantization.skip_modules"},
      {"adapter.rank", "adapter.r"},
      {"adapter.lora_r", "adapter.r"},
      {"adapter.lora_alpha", "adapter.alpha"},
      {"adapter.lora_dropout", "adapter.dropout"},
      {"adapter.use_rslora", "adapter.rslora"},
      {"data.dataset", "data.path"},
      {"data.train_path", "data.path"},
      {"data.seq_len", "data.max_seq_len"},
      {"data.sequence_len", "data.max_seq_len"},
      {"data.max_length", "data.max_seq_len"},
      {"data.chat_template", "data.template"},
      {"training.learning_rate", "training.lr"},
      {"training.batch_size", "training.micro_batch_size"},
      {"training.per_device_train_batch_size", "training.micro_batch_size"},
      {"training.gradient_accumulation_steps", "training.grad_accum_steps"},
      {"training.num_epochs", "training.epochs"},
      {"training.num_train_epochs", "training.epochs"},
      {"training.lr_scheduler", "training.scheduler"},
      {"training.lr_scheduler_type", "training.scheduler"},
      {"training.optim", "training.optimizer"},
      {"training.adam_beta1", "training.beta1"},
      {"training.adam_beta2", "training.beta2"},
      {"training.adam_epsilon", "training.eps"},
      {"training.grad_clip", "training.max_grad_norm"},
      {"training.logging_steps", "training.log_every"},
      {"training.eval_steps", "training.eval_every"},
      {"output.output_dir", "output.dir"},
      {"output.save_steps", "output.save_every"},
      {"output.save_total_limit", "output.keep_last"},
  };
  return kAliases;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitute = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitute});
    }
  }
  return row[b.size()];
}

// Short names are close to too many others: allow one edit up to 4 characters, else two.
size_t max_distance(const std::string& name) {
  return name.size() <= 4 ? 1 : 2;
}

std::string field_of(const std::string& dotted) {
  return dotted.substr(dotted.find('.') + 1);
}
std::string section_of(const std::string& dotted) {
  return dotted.substr(0, dotted.find('.'));
}

// Closest of `candidates` (name -> what to suggest) within the distance limit, or "".
std::string closest(const std::string& name,
                    const std::vector<std::pair<std::string, std::string>>& candidates) {
  std::string best;
  size_t best_distance = max_distance(name) + 1;
  for (const auto& [candidate, suggestion] : candidates) {
    const size_t d = edit_distance(name, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = suggestion;
    }
  }
  return best;
}

std::string suggest_top_level(const std::string& name) {
  std::vector<std::pair<std::string, std::string>> sections;
  for (const std::string& s : recipe_sections()) sections.emplace_back(s, s);
  if (std::string s = closest(name, sections); !s.empty()) return s;
  for (const std::string& key : recipe_keys())
    if (field_of(key) == name) return key;
  for (const auto& [alias, key] : aliases())
    if (field_of(alias) == name) return key;
  return "";
}

}  // namespace

const std::vector<std::string>& recipe_sections() {
  static const std::vector<std::string> kSections = [] {
    std::vector<std::string> names;
    const Recipe recipe;
    recipe_schema::for_each_section(
        recipe, [&](const char* name, const auto&) { names.emplace_back(name); });
    return names;
  }();
  return kSections;
}

const std::vector<std::string>& recipe_keys() {
  static const std::vector<std::string> kKeys = [] {
    std::vector<std::string> keys;
    const Recipe recipe;
    recipe_schema::for_each_section(recipe, [&](const char* section, const auto& s) {
      recipe_schema::for_each_field(s, [&](const char* field, const auto&) {
        keys.push_back(std::string(section) + "." + field);
      });
    });
    return keys;
  }();
  return kKeys;
}

std::string suggest_recipe_key(const std::string& unknown) {
  if (unknown.find('.') == std::string::npos) return suggest_top_level(unknown);
  const std::string section = section_of(unknown);
  const std::string field = field_of(unknown);
  if (auto alias = aliases().find(unknown); alias != aliases().end()) return alias->second;

  std::vector<std::pair<std::string, std::string>> same_section;
  for (const std::string& key : recipe_keys())
    if (section_of(key) == section) same_section.emplace_back(field_of(key), key);
  for (const auto& [alias, key] : aliases())
    if (section_of(alias) == section) same_section.emplace_back(field_of(alias), key);
  if (std::string s = closest(field, same_section); !s.empty()) return s;

  for (const std::string& key : recipe_keys())
    if (field_of(key) == field) return key;
  return "";
}

std::string unknown_key_message(const std::string& unknown) {
  const std::string suggestion = suggest_recipe_key(unknown);
  std::string message = "unknown key '" + unknown + "'";
  if (!suggestion.empty()) message += " (did you mean '" + suggestion + "'?)";
  return message;
}

}  // namespace qtrain

// The recipe's data section, applied: tokenizer, tokenized train and held-out examples.
#pragma once

#include "data/examples.h"
#include "data/tokenizer.h"

#include <memory>
#include <string>
#include <vector>

namespace qtrain {

struct Recipe;

struct TrainingData {
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<Example> train;
  std::vector<Example> eval;  // empty when eval_fraction is 0 and there is no eval_path
  // data.format preference: train / eval hold the chosen sides, these their rejected partners.
  std::vector<Example> train_rejected;
  std::vector<Example> eval_rejected;
  ExampleStats train_stats;
};

// Example options from the recipe and the tokenizer's BOS rule; data.template auto resolves to
// the template of `model_dir`/tokenizer_config.json's chat_template.
ExampleOptions example_options_of(const Recipe& recipe, const Tokenizer& tokenizer,
                                  const std::string& model_dir);

// The chat template data.template auto means for `model_dir`: with `render_jinja` and the Jinja
// engine built in (data/chat_template_jinja.h), "jinja:<tokenizer_config.json>", the model's own
// template rendered as transformers renders it; otherwise the known template (data/
// prompt_format.h) it is. Error(kIo) or Error(kFormat) naming tokenizer_config.json when it is
// missing, malformed or has no template; Error(kUnsupported) for a template qtrain cannot
// reproduce. qgen builds prompts from the known shapes and passes render_jinja = false.
std::string model_chat_template(const std::string& model_dir, bool render_jinja = false);

// Tokenizes data.path (and data.eval_path, or holds out data.eval_fraction of data.path, by
// training.seed), with the tokenizer of `model_dir`. Errors name the data file and line.
TrainingData load_training_data(const Recipe& recipe, const std::string& model_dir);

}  // namespace qtrain

#include "trainer/training_data.h"

#include "core/error.h"
#include "core/log.h"
#include "data/split.h"
#include "trainer/recipe.h"

namespace qtrain {

ExampleOptions example_options_of(const Recipe& recipe, const Tokenizer& tokenizer) {
  const auto& d = recipe.data;
  ExampleOptions options;
  options.max_seq_len = d.max_seq_len;
  options.overlong = d.overlong;
  options.train_on_inputs = d.train_on_inputs;
  options.add_bos = tokenizer.add_bos_default();
  options.add_eos = d.add_eos;
  if (d.format == "chat") options.chat_template = d.template_name;
  options.skip_bad_lines = d.skip_bad_lines;
  return options;
}

TrainingData load_training_data(const Recipe& recipe, const std::string& model_dir) {
  const auto& d = recipe.data;
  TrainingData out;
  out.tokenizer = load_tokenizer(model_dir);
  const ExampleOptions options = example_options_of(recipe, *out.tokenizer);
  std::vector<Example> all =
      load_examples(d.path, d.format, d.fields, *out.tokenizer, options, &out.train_stats);
  log::info("data ", d.path, ": ", out.train_stats.summary());
  if (!d.eval_path.empty()) {
    out.train = std::move(all);
    ExampleStats eval_stats;
    out.eval = load_examples(d.eval_path, d.format, d.fields, *out.tokenizer, options, &eval_stats);
    if (d.eval_max_samples > 0 && static_cast<int64_t>(out.eval.size()) > d.eval_max_samples) {
      out.eval.resize(d.eval_max_samples);
    }
    log::info("eval data ", d.eval_path, ": ", eval_stats.summary());
  } else {
    split_train_eval(all, d.eval_fraction, d.eval_max_samples, recipe.training.seed, &out.train,
                     &out.eval);
  }
  log::info(out.train.size(), " training and ", out.eval.size(), " held-out examples");
  return out;
}

}  // namespace qtrain

#include "trainer/training_data.h"

#include "data/preference_pairs.h"

#include "core/error.h"
#include "core/log.h"
#include "data/split.h"
#include "trainer/recipe/recipe.h"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace qtrain {

std::string model_chat_template(const std::string& model_dir, bool render_jinja) {
  const std::string path = model_dir + "/tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw_error(ErrorKind::kIo, "cannot open it (data.template auto reads the model's template)",
                {.file = path});
  }
  const nlohmann::json config = read_tokenizer_config(path);
  const auto it = config.is_object() ? config.find("chat_template") : config.end();
  if (it == config.end() || !it->is_string()) {
    throw_error(ErrorKind::kFormat,
                "no chat_template string (data.template auto needs one; name the template "
                "instead)",
                {.file = path, .field = "chat_template"});
  }
  if (render_jinja) {
    const std::string name = model_chat_template_name(it->get<std::string>(), path);
    if (is_jinja_chat_template(name)) {
      log::info("data.template auto: rendering the model's own chat_template from ", path);
      return name;
    }
  }
  const std::string name = recognize_chat_template(it->get<std::string>(), path);
  log::info("data.template auto: the model's chat template is ", name);
  return name;
}

ExampleOptions example_options_of(const Recipe& recipe, const Tokenizer& tokenizer,
                                  const std::string& model_dir) {
  const auto& d = recipe.data;
  ExampleOptions options;
  options.max_seq_len = d.max_seq_len;
  options.overlong = d.overlong;
  // Preference objectives score the responses alone (ORPO's NLL adds the prompt itself).
  options.train_on_inputs = d.train_on_inputs && d.format != "preference";
  options.add_bos = tokenizer.add_bos_default();
  options.add_eos = d.add_eos;
  if (d.format == "chat" || d.format == "preference") {
    options.chat_template = d.template_name == "auto"
                                ? model_chat_template(model_dir, /*render_jinja=*/true)
                                : d.template_name;
  }
  options.skip_bad_lines = d.skip_bad_lines;
  options.max_record_bytes = d.max_record_bytes;
  return options;
}

namespace {

// Preference pairs: the chosen sides in train / eval, their partners beside them; held out by
// the same split, so pair i stays together.
void load_preference_data(const Recipe& recipe, const ExampleOptions& options, TrainingData& out) {
  const auto& d = recipe.data;
  PreferencePairs all =
      load_preference_pairs(d.path, d.fields, *out.tokenizer, options, &out.train_stats);
  log::info("preference data ", d.path, ": ", out.train_stats.summary());
  if (!d.eval_path.empty()) {
    out.train = std::move(all.chosen);
    out.train_rejected = std::move(all.rejected);
    ExampleStats eval_stats;
    PreferencePairs eval =
        load_preference_pairs(d.eval_path, d.fields, *out.tokenizer, options, &eval_stats);
    if (d.eval_max_samples > 0 && static_cast<int64_t>(eval.chosen.size()) > d.eval_max_samples) {
      eval.chosen.resize(d.eval_max_samples);
      eval.rejected.resize(d.eval_max_samples);
    }
    out.eval = std::move(eval.chosen);
    out.eval_rejected = std::move(eval.rejected);
    log::info("eval data ", d.eval_path, ": ", eval_stats.summary());
  } else {
    split_train_eval(all.chosen, d.eval_fraction, d.eval_max_samples, recipe.training.seed,
                     &out.train, &out.eval);
    split_train_eval(all.rejected, d.eval_fraction, d.eval_max_samples, recipe.training.seed,
                     &out.train_rejected, &out.eval_rejected);
  }
  log::info(out.train.size(), " training and ", out.eval.size(), " held-out preference pairs");
}

}  // namespace

TrainingData load_training_data(const Recipe& recipe, const std::string& model_dir) {
  const auto& d = recipe.data;
  TrainingData out;
  out.tokenizer = load_tokenizer(model_dir);
  const ExampleOptions options = example_options_of(recipe, *out.tokenizer, model_dir);
  if (d.format == "preference") {
    load_preference_data(recipe, options, out);
    return out;
  }
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

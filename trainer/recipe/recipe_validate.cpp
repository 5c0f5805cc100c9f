#include "trainer/recipe/recipe_validate.h"

#include "data/preference_pairs.h"
#include "data/prompt_format.h"
#include "trainer/recipe/known_models.h"

#include <algorithm>
#include <regex>
#include <sstream>

namespace qtrain {
namespace {

using Names = std::vector<std::string>;

std::string join(const Names& names, const std::string& separator = ", ") {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : separator) + n;
  return out;
}

bool contains(const Names& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

template <class T>
std::string str(const T& value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

bool is_power_of_two(int64_t v) {
  return v > 0 && (v & (v - 1)) == 0;
}

// Beyond any real use, low enough that adapter and batch sizes stay far from int64 overflow and
// are refused here rather than by the allocator. A rank above a projection's smaller side adds
// nothing; the widest projections of published models are below 2^16.
constexpr int64_t kMaxAdapterRank = int64_t{1} << 16;
// Longer than any model's context (16M tokens).
constexpr int64_t kMaxSeqLen = int64_t{1} << 24;
// Tokens of one micro-batch: packed rows are always max_seq_len long, and their ids, positions,
// labels and segment ids take 32 bytes a token (8 GiB at this bound), before any activation.
constexpr int64_t kMaxMicroBatchTokens = int64_t{1} << 28;

// Small checks that report through the origins of the recipe being validated.
class Checks {
 public:
  explicit Checks(const RecipeOrigins& origins) : origins_(origins) {}

  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    origins_.fail(key, message);
  }
  void one_of(const std::string& key, const std::string& value, const Names& allowed) const {
    if (!contains(allowed, value))
      fail(key, "unknown value '" + value + "'; expected one of: " + join(allowed));
  }
  template <class T>
  void at_least(const std::string& key, T value, T min) const {
    if (value < min) fail(key, "must be >= " + str(min) + " (got " + str(value) + ")");
  }
  void at_most(const std::string& key, int64_t value, int64_t max) const {
    if (value > max) fail(key, "must be at most " + str(max) + " (got " + str(value) + ")");
  }
  void positive(const std::string& key, double value) const {
    if (!(value > 0)) fail(key, "must be > 0 (got " + str(value) + ")");
  }
  // lo <= value < hi, or lo <= value <= hi when `hi_inclusive`.
  void in_range(const std::string& key, double value, double lo, double hi,
                bool hi_inclusive = false) const {
    const bool ok = value >= lo && (hi_inclusive ? value <= hi : value < hi);
    if (!ok) {
      fail(key, "must be in [" + str(lo) + ", " + str(hi) + (hi_inclusive ? "]" : ")") + " (got " +
                    str(value) + ")");
    }
  }
  void required(const std::string& key, const std::string& value, const std::string& what) const {
    if (value.empty()) fail(key, "is required: " + what);
  }

 private:
  const RecipeOrigins& origins_;
};

bool is_device(const std::string& device) {
  static const std::regex kDevice("auto|cpu|cuda(:[0-9]+)?");
  return std::regex_match(device, kDevice);
}

void check_model(const ModelSection& m, const Checks& c) {
  c.required("model.path", m.path, "an HF model directory or builtin:tiny / builtin:micro");
  if (!m.known_config.empty()) c.one_of("model.known_config", m.known_config, known_model_names());
  c.one_of("model.dtype", m.dtype, {"auto", "bfloat16", "float16", "float32"});
  if (!is_device(m.device))
    c.fail("model.device", "unknown device '" + m.device + "'; expected auto, cpu, cuda or cuda:N");
}

void check_quantization(const QuantizationSection& q, const AdapterSection& a, const Checks& c) {
  c.one_of("quantization.type", q.type, {"nf4", "fp4", "int8", "int4", "none"});
  const bool blockwise = q.type == "nf4" || q.type == "fp4" || q.type == "int8";
  if (blockwise && (!is_power_of_two(q.blocksize) || q.blocksize < 64 || q.blocksize > 4096)) {
    c.fail("quantization.blocksize",
           "must be a power of two from 64 to 4096 (got " + str(q.blocksize) + ")");
  }
  if (q.double_quant && q.type != "nf4" && q.type != "fp4") {
    c.fail("quantization.double_quant",
           "double quantization compresses the block scales of nf4/fp4 only; set it to false "
           "for quantization.type " +
               q.type);
  }
  if (q.group_size != 32 && q.group_size != 64 && q.group_size != 128)
    c.fail("quantization.group_size", "must be 32, 64 or 128 (got " + str(q.group_size) + ")");
  for (const std::string& module : q.skip_modules)
    if (module.empty()) c.fail("quantization.skip_modules", "entries must not be empty");

  if (a.type == "qalora" && q.type != "int4") {
    c.fail("adapter.type",
           "qalora needs quantization.type int4 (got " + q.type +
               "): QA-LoRA pools its input over the INT4 groups so that its update folds into "
               "their zero points");
  }
  if (q.type == "int4" && a.type != "qalora") {
    c.fail("quantization.type",
           "int4 needs adapter.type qalora: a plain LoRA update cannot be merged into a "
           "group-wise INT4 base without requantizing away what it learned; use nf4 for LoRA");
  }
}

void check_adapter(const AdapterSection& a, const Checks& c) {
  c.one_of("adapter.type", a.type, {"lora", "qalora"});
  c.at_least<int64_t>("adapter.r", a.r, 1);
  c.at_most("adapter.r", a.r, kMaxAdapterRank);
  c.positive("adapter.alpha", a.alpha);
  c.in_range("adapter.dropout", a.dropout, 0.0, 1.0);
  c.one_of("adapter.dtype", a.dtype, {"auto", "bfloat16", "float32"});
  if (!a.target_regex.empty()) {
    if (!a.target_modules.empty()) {
      c.fail("adapter.target_regex",
             "adapter.target_modules and adapter.target_regex are alternatives; set only one");
    }
    try {
      std::regex check(a.target_regex);
    } catch (const std::regex_error& e) {
      c.fail("adapter.target_regex", "not a valid regular expression: " + std::string(e.what()));
    }
    return;
  }
  if (a.target_modules.empty()) {
    c.fail("adapter.target_modules",
           "names no module; list module names (e.g. [q_proj, v_proj]) or use all-linear");
  }
  for (const std::string& module : a.target_modules) {
    if (module.empty()) c.fail("adapter.target_modules", "entries must not be empty");
    if (module == "all-linear" && a.target_modules.size() > 1)
      c.fail("adapter.target_modules", "all-linear must be the only entry");
  }
}

void check_data(const DataSection& d, const Checks& c) {
  c.required("data.path", d.path, "the training data (JSONL, JSON or .txt)");
  c.one_of("data.format", d.format, {"alpaca", "completion", "text", "chat", "preference"});
  c.one_of("data.template", d.template_name, recipe_data_templates());
  if (d.format == "chat" && !contains(chat_templates(), d.template_name) &&
      d.template_name != "auto") {
    c.fail("data.template", "format chat needs a chat template (" + join(chat_templates()) +
                                ", or auto: the model's own), not " + d.template_name);
  }
  const Names& fields =
      d.format == "preference" ? preference_fields() : prompt_format_fields(d.format);
  for (const auto& [field, renamed] : d.fields) {
    if (!contains(fields, field)) {
      c.fail("data.fields",
             "'" + field + "' is not a field of format " + d.format + " (" + join(fields) + ")");
    }
    if (renamed.empty()) c.fail("data.fields", "the name for '" + field + "' is empty");
  }
  c.at_least<int64_t>("data.max_seq_len", d.max_seq_len, 8);
  c.at_most("data.max_seq_len", d.max_seq_len, kMaxSeqLen);
  c.one_of("data.overlong", d.overlong, {"truncate", "drop"});
  c.in_range("data.eval_fraction", d.eval_fraction, 0.0, 1.0);
  c.at_least<int64_t>("data.eval_max_samples", d.eval_max_samples, 0);
  c.at_least<int64_t>("data.max_record_bytes", d.max_record_bytes, 1);
}

// A micro-batch's tokens, checked by division so that absurd sizes cannot overflow first.
void check_micro_batch_tokens(const TrainingSection& t, const DataSection& d, const Checks& c) {
  if (t.micro_batch_size <= kMaxMicroBatchTokens / d.max_seq_len) return;
  c.fail("training.micro_batch_size", "training.micro_batch_size x data.max_seq_len (" +
                                          str(t.micro_batch_size) + " x " + str(d.max_seq_len) +
                                          ") is more than " + str(kMaxMicroBatchTokens) +
                                          " tokens per micro-batch");
}

// Preference objectives and their data go together, and want pairs whole.
void check_objective(const TrainingSection& t, const DataSection& d, const AdapterSection& a,
                     const Checks& c) {
  c.one_of("training.objective", t.objective, {"sft", "dpo", "orpo"});
  c.positive("training.dpo_beta", t.dpo_beta);
  c.in_range("training.dpo_label_smoothing", t.dpo_label_smoothing, 0.0, 0.5);
  c.at_least("training.orpo_lambda", t.orpo_lambda, 0.0);
  const bool preference = t.objective == "dpo" || t.objective == "orpo";
  if (preference && d.format != "preference") {
    c.fail("training.objective", t.objective +
                                     " trains on pairs: set data.format: preference "
                                     "(prompt, chosen, rejected)");
  }
  if (!preference && d.format == "preference" && t.objective == "sft") {
    c.fail("data.format", "preference pairs train with training.objective dpo or orpo");
  }
  if (preference && d.packing) {
    c.fail("data.packing",
           "packs whole samples into rows; preference pairs are scored one "
           "sequence per row: set data.packing: false");
  }
  if (t.precompute_ref_log_probs && t.objective != "dpo") {
    c.fail("training.precompute_ref_log_probs", "only DPO has a reference model");
  }
  if (preference) {
    for (const std::string& module : a.target_modules) {
      if (module == "lm_head") {
        c.fail("adapter.target_modules",
               "lm_head: preference objectives score whole sequences through a frozen lm_head; "
               "adapt the decoder's projections");
      }
    }
  }
}

void check_training(const TrainingSection& t, const DataSection& d, const Checks& c) {
  c.at_least<int64_t>("training.micro_batch_size", t.micro_batch_size, 1);
  check_micro_batch_tokens(t, d, c);
  c.at_least<int64_t>("training.grad_accum_steps", t.grad_accum_steps, 1);
  c.at_least<int64_t>("training.max_steps", t.max_steps, 0);
  c.at_least<int64_t>("training.epochs", t.epochs, 1);
  c.positive("training.lr", t.lr);
  c.at_least("training.weight_decay", t.weight_decay, 0.0);
  c.in_range("training.beta1", t.beta1, 0.0, 1.0);
  c.in_range("training.beta2", t.beta2, 0.0, 1.0);
  c.positive("training.eps", t.eps);
  c.one_of("training.optimizer", t.optimizer,
           {"adamw", "paged_adamw", "adamw_8bit", "paged_adamw_8bit"});
  c.one_of("training.scheduler", t.scheduler, {"constant", "linear", "cosine"});
  c.at_least<int64_t>("training.warmup_steps", t.warmup_steps, 0);
  c.in_range("training.warmup_ratio", t.warmup_ratio, 0.0, 1.0);
  if (t.warmup_steps > 0 && t.warmup_ratio > 0) {
    c.fail("training.warmup_ratio",
           "training.warmup_steps and training.warmup_ratio are alternatives; set only one");
  }
  if (t.max_steps > 0 && t.warmup_steps > t.max_steps) {
    c.fail("training.warmup_steps",
           "exceeds training.max_steps (" + str(t.warmup_steps) + " > " + str(t.max_steps) + ")");
  }
  c.in_range("training.min_lr_ratio", t.min_lr_ratio, 0.0, 1.0, /*hi_inclusive=*/true);
  c.at_least("training.max_grad_norm", t.max_grad_norm, 0.0);
  c.at_least("training.loss_chunk_tokens", t.loss_chunk_tokens, int64_t{0});
  c.at_least<int64_t>("training.eval_every", t.eval_every, 0);
  c.at_least<int64_t>("training.eval_batches", t.eval_batches, 0);
  c.at_least<int64_t>("training.log_every", t.log_every, 1);
  c.one_of("training.on_nonfinite", t.on_nonfinite, {"stop", "skip"});
  if (t.offload_activations && !t.gradient_checkpointing) {
    c.fail("training.offload_activations",
           "offloads the inputs that checkpointed layers keep; set "
           "training.gradient_checkpointing: true");
  }
  if (t.eval_every > 0 && d.eval_path.empty() && d.eval_fraction == 0) {
    c.fail("training.eval_every",
           "there is no eval data: set data.eval_path or data.eval_fraction > 0");
  }
}

void check_output(const OutputSection& o, const AdapterSection& a, const Checks& c) {
  c.required("output.dir", o.dir, "the run directory");
  c.at_least<int64_t>("output.save_every", o.save_every, 0);
  c.at_least<int64_t>("output.keep_last", o.keep_last, 1);
  for (const std::string& entry : o.exports) {
    c.one_of("output.export", entry, recipe_export_formats());
    if (entry == "gptq-int4" && a.type != "qalora") {
      c.fail("output.export", "gptq-int4 exports QA-LoRA runs (adapter.type: qalora)");
    }
  }
}

void check_distributed(const DistributedSection& dist, const ModelSection& m, const Checks& c) {
  c.one_of("distributed.backend", dist.backend, {"auto", "nccl", "gloo", "none"});
  if (dist.backend == "nccl" && m.device == "cpu")
    c.fail("distributed.backend", "nccl needs CUDA devices, but model.device is cpu; use gloo");
  c.at_least<int64_t>("distributed.timeout_s", dist.timeout_s, 1);
  c.at_least<int64_t>("distributed.bucket_mb", dist.bucket_mb, 1);
  c.one_of("distributed.strategy", dist.strategy, {"ddp", "shard"});
  c.at_least<int64_t>("distributed.prefetch", dist.prefetch, 0);
}

}  // namespace

const std::vector<std::string>& recipe_data_templates() {
  static const Names kTemplates = [] {
    Names names = {"alpaca"};
    names.insert(names.end(), chat_templates().begin(), chat_templates().end());
    names.push_back("auto");
    return names;
  }();
  return kTemplates;
}

const std::vector<std::string>& recipe_export_formats() {
  static const Names kFormats = {"adapter",   "merged-bf16", "merged-fp16", "nf4",
                                 "gguf",      "gguf:f16",    "gguf:q8_0",   "gguf:q4_0",
                                 "gguf:q4_1", "gguf:q4_k_m", "gptq-int4"};
  return kFormats;
}

void validate_recipe(const Recipe& recipe, const RecipeOrigins& origins) {
  const Checks checks(origins);
  check_model(recipe.model, checks);
  check_adapter(recipe.adapter, checks);
  check_quantization(recipe.quantization, recipe.adapter, checks);
  check_data(recipe.data, checks);
  check_training(recipe.training, recipe.data, checks);
  check_objective(recipe.training, recipe.data, recipe.adapter, checks);
  check_output(recipe.output, recipe.adapter, checks);
  check_distributed(recipe.distributed, recipe.model, checks);
  if (recipe.model.synthetic && recipe.quantization.type == "int4") {
    checks.fail("model.synthetic",
                "synthetic models take quantization.type nf4, fp4, int8 or "
                "none, not int4");
  }
  if (recipe.model.synthetic && !recipe.adapter.init_from.empty()) {
    checks.fail("model.synthetic",
                "a synthetic base has no trained adapters to start from "
                "(adapter.init_from)");
  }
}

}  // namespace qtrain

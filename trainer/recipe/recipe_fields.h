// The recipe schema in one place: every section and field with its YAML key, in the order the
// resolved recipe is written. Parsing, writing, equality and key suggestions all walk it, so a
// new field is one line here plus its member in recipe.h.
#pragma once

#include "trainer/recipe/recipe.h"

#include <type_traits>

namespace qtrain::recipe_schema {

// Calls visit(yaml_key, member) for each field of `section` (const or not).
template <class Section, class Visitor>
void for_each_field(Section& s, Visitor&& visit) {
  using S = std::remove_const_t<Section>;
  if constexpr (std::is_same_v<S, ModelSection>) {
    visit("path", s.path);
    visit("known_config", s.known_config);
    visit("dtype", s.dtype);
    visit("device", s.device);
    visit("embeddings_on_host", s.embeddings_on_host);
    visit("synthetic", s.synthetic);
  } else if constexpr (std::is_same_v<S, QuantizationSection>) {
    visit("type", s.type);
    visit("blocksize", s.blocksize);
    visit("double_quant", s.double_quant);
    visit("group_size", s.group_size);
    visit("skip_modules", s.skip_modules);
  } else if constexpr (std::is_same_v<S, AdapterSection>) {
    visit("type", s.type);
    visit("r", s.r);
    visit("alpha", s.alpha);
    visit("dropout", s.dropout);
    visit("rslora", s.rslora);
    visit("target_modules", s.target_modules);
    visit("target_regex", s.target_regex);
    visit("dtype", s.dtype);
    visit("init_from", s.init_from);
  } else if constexpr (std::is_same_v<S, DataSection>) {
    visit("path", s.path);
    visit("eval_path", s.eval_path);
    visit("format", s.format);
    visit("template", s.template_name);
    visit("fields", s.fields);
    visit("max_seq_len", s.max_seq_len);
    visit("packing", s.packing);
    visit("overlong", s.overlong);
    visit("train_on_inputs", s.train_on_inputs);
    visit("add_eos", s.add_eos);
    visit("eval_fraction", s.eval_fraction);
    visit("eval_max_samples", s.eval_max_samples);
    visit("skip_bad_lines", s.skip_bad_lines);
    visit("max_record_bytes", s.max_record_bytes);
  } else if constexpr (std::is_same_v<S, TrainingSection>) {
    visit("objective", s.objective);
    visit("dpo_beta", s.dpo_beta);
    visit("dpo_label_smoothing", s.dpo_label_smoothing);
    visit("orpo_lambda", s.orpo_lambda);
    visit("precompute_ref_log_probs", s.precompute_ref_log_probs);
    visit("micro_batch_size", s.micro_batch_size);
    visit("grad_accum_steps", s.grad_accum_steps);
    visit("max_steps", s.max_steps);
    visit("epochs", s.epochs);
    visit("lr", s.lr);
    visit("weight_decay", s.weight_decay);
    visit("beta1", s.beta1);
    visit("beta2", s.beta2);
    visit("eps", s.eps);
    visit("optimizer", s.optimizer);
    visit("scheduler", s.scheduler);
    visit("warmup_steps", s.warmup_steps);
    visit("warmup_ratio", s.warmup_ratio);
    visit("min_lr_ratio", s.min_lr_ratio);
    visit("max_grad_norm", s.max_grad_norm);
    visit("gradient_checkpointing", s.gradient_checkpointing);
    visit("loss_chunk_tokens", s.loss_chunk_tokens);
    visit("deterministic", s.deterministic);
    visit("offload_activations", s.offload_activations);
    visit("seed", s.seed);
    visit("eval_every", s.eval_every);
    visit("eval_batches", s.eval_batches);
    visit("log_every", s.log_every);
    visit("on_nonfinite", s.on_nonfinite);
  } else if constexpr (std::is_same_v<S, OutputSection>) {
    visit("dir", s.dir);
    visit("save_every", s.save_every);
    visit("keep_last", s.keep_last);
    visit("tensorboard", s.tensorboard);
    visit("overwrite", s.overwrite);
    visit("export", s.exports);
  } else {
    static_assert(std::is_same_v<S, DistributedSection>, "not a recipe section");
    visit("backend", s.backend);
    visit("timeout_s", s.timeout_s);
    visit("bucket_mb", s.bucket_mb);
    visit("strategy", s.strategy);
    visit("prefetch", s.prefetch);
  }
}

// Calls visit(section_name, section) for each section of `recipe` (const or not).
template <class R, class Visitor>
void for_each_section(R& recipe, Visitor&& visit) {
  visit("model", recipe.model);
  visit("quantization", recipe.quantization);
  visit("adapter", recipe.adapter);
  visit("data", recipe.data);
  visit("training", recipe.training);
  visit("output", recipe.output);
  visit("distributed", recipe.distributed);
}

}  // namespace qtrain::recipe_schema

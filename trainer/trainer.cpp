#include "trainer/trainer.h"

#include "core/cpu_capabilities.h"
#include "core/error.h"
#include "core/int_math.h"
#include "core/log.h"
#include "data/batcher.h"
#include "data/shuffle.h"
#include "models/device_memory.h"
#include "models/llama.h"
#include "peft/peft_files.h"
#include "trainer/causal_lm_loss.h"
#include "trainer/chunked_loss.h"
#include "trainer/deterministic_kernels.h"
#include "trainer/distributed/data_parallel.h"
#include "trainer/distributed/grad_reducer.h"
#include "trainer/distributed/sharded_base.h"
#include "trainer/evaluate.h"
#include "trainer/interrupt.h"
#include "trainer/loss_scaler.h"
#include "trainer/memory_usage.h"
#include "trainer/no_sync_scope.h"
#include "trainer/numerics_guard.h"
#include "trainer/optim/grad_clip.h"
#include "trainer/optim/lr_scheduler.h"
#include "trainer/optim/optimizer.h"
#include "trainer/preference_eval.h"
#include "trainer/preference_loss.h"
#include "trainer/progress.h"
#include "trainer/recipe/recipe.h"
#include "trainer/run_directory.h"
#include "trainer/run_lock.h"
#include "trainer/step_profiler.h"
#include "trainer/tensorboard_writer.h"
#include "trainer/train_checkpoint.h"
#include "trainer/training_data.h"
#include "trainer/training_model.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>

namespace qtrain {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

NamedParameters named_adapter_parameters(const NamedAdapters& adapters) {
  NamedParameters named;
  for (const auto& [module, adapter] : adapters) {
    for (const auto& [name, tensor] : adapter->adapter_tensors()) {
      named.emplace_back(module + "." + name, tensor);
    }
  }
  return named;
}

nlohmann::json extra_adapter_config(const TrainingModel& m) {
  nlohmann::json extra = nlohmann::json::object();
  if (m.qalora_group_size > 0) {
    extra["use_qalora"] = true;
    extra["qalora_group_size"] = m.qalora_group_size;
  }
  return extra;
}

// A checkpoint past the run's last step would train nothing and still report the run done.
void check_checkpoint_step(int64_t step, int64_t total_steps, const std::string& state_file) {
  if (step <= total_steps) return;
  throw_error(ErrorKind::kFormat,
              "step " + std::to_string(step) + " is past the " + std::to_string(total_steps) +
                  " steps of this run (training.max_steps, or training.epochs over the data): "
                  "the file is damaged, or the recipe changed since the checkpoint",
              {.file = state_file, .field = "step"});
}

// Everything one run holds while it trains.
class TrainingRun {
 public:
  TrainingRun(const Recipe& recipe, const TrainOptions& options)
      : recipe_(recipe), options_(options), run_dir_(recipe.output.dir) {}

  TrainResult run();

 private:
  void setup();
  void setup_activation_offloading();
  void resume_from(const std::string& checkpoint_dir);
  void run_eval(int64_t step);
  void save(int64_t step);
  // One optimizer step: train_step, apply_update, log_step. False when it was skipped.
  bool run_step(int64_t step);
  // run_step under the Kineto profiler (QTRAIN_PROFILE_STEP), summary in the run directory.
  void run_profiled_step(int64_t step);

  // The pieces of one optimizer step.
  struct StepBatches {
    std::vector<Batch> micro;
    int64_t loss_tokens = 0;           // over all ranks
    int64_t pairs = 0;                 // preference objectives: pairs, over all ranks
    int64_t tokens = 0;                // over all ranks
    std::vector<std::string> origins;  // this rank's samples
  };
  // What the step's one device-to-host read brings back.
  struct StepValues {
    double loss = 0;              // mean token loss (preference: mean pair loss) over all ranks
    double grad_norm = 0;         // before clipping
    std::vector<double> metrics;  // preference objectives: preference_metric_names, means
  };
  StepBatches next_step_batches();
  void skip_all_masked_step(int64_t step, double lr, const StepBatches& batches);
  // Forward and backward of every micro-batch, without waiting for the device; returns each
  // micro-batch's summed token loss [k] float32, on the device.
  at::Tensor train_step(int64_t step, const StepBatches& batches);
  at::Tensor micro_batch_loss_sum(const Batch& batch);
  ForwardInputs forward_inputs(const Batch& batch) const;
  // What one step divides its loss sums by: pairs (preference objectives) or loss tokens.
  double step_units(const StepBatches& batches) const;
  void setup_preference();
  void run_preference_eval(int64_t step);
  at::Tensor to_device(const at::Tensor& host) const;
  // Unscale, clip, read the step's values once, then step the optimizer unless they are
  // non-finite; nullopt when the step was skipped.
  std::optional<StepValues> apply_update(int64_t step, double lr, const StepBatches& batches,
                                         const at::Tensor& micro_sums);
  void warn_all_masked_micro_batch(int64_t step, size_t k, const StepBatches& batches);
  std::string describe_micro_batch(const StepBatches& batches, int64_t k) const;
  void skip_overflow_step(int64_t step, double lr);
  void skip_nonfinite_step(int64_t step, double lr, const StepValues& values,
                           const std::string& nonfinite_where, const StepBatches& batches);
  void watch_loss_spike(int64_t step, double loss, const StepBatches& batches);
  void log_step(int64_t done, double lr, const StepValues& values, const StepBatches& batches,
                double seconds);

  const Recipe& recipe_;
  TrainOptions options_;
  DataParallel dp_;
  std::unique_ptr<ShardedBase> sharded_;         // distributed.strategy shard
  std::optional<PreferenceOptions> preference_;  // training.objective dpo | orpo
  std::vector<std::vector<double>> reference_;   // precomputed: [chosen, rejected][example id]
  at::Tensor step_metric_sums_;                  // preference: this step's, on the device
  std::string run_dir_;
  TrainingModel m_;
  TrainingData data_;
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<Optimizer> optimizer_;
  std::vector<at::Tensor> params_;
  std::vector<std::string> param_names_;
  LossSpikeDetector spikes_;
  LossScaler scaler_{false};
  ScheduleOptions schedule_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  std::optional<int64_t> cuda_index_;
  int64_t start_step_ = 0, total_steps_ = 0, pad_id_ = 0;
  int64_t profile_step_ = 0;  // QTRAIN_PROFILE_STEP, 1-based; 0: none
  int64_t last_saved_step_ = -1;
  TrainResult result_;
};

void TrainingRun::setup() {
  const auto& t = recipe_.training;
  at::manual_seed(t.seed);
  if (t.deterministic) use_deterministic_kernels();
  Recipe this_rank = recipe_;
  this_rank.model.device = dp_.device_for_rank(recipe_.model.device);
  sharded_ = sharded_base_if_asked(recipe_, dp_, resolve_device(this_rank.model.device));
  m_ = build_training_model(this_rank, sharded_ ? &sharded_->load() : nullptr, [&](CausalLM& base) {
    if (sharded_) sharded_->adopt(base, dp_);
  });
  scaler_ = LossScaler(m_.model->options().dtype() == at::kHalf);
  // Same adapter initialisation everywhere (rank 0's is broadcast anyway), different dropout.
  if (dp_.rank() > 0) at::manual_seed(mix_seed(t.seed, static_cast<uint64_t>(dp_.rank())));
  if (m_.device.is_cuda()) cuda_index_ = m_.device.index();
  m_.model->set_gradient_checkpointing(t.gradient_checkpointing);
  if (t.offload_activations) setup_activation_offloading();
  m_.model->train();
  log::info("model ", m_.model_dir, ": ", m_.model->config().num_hidden_layers, " layers, ",
            m_.adapters.size(), " adapters, on ", m_.device.str(), " in ", recipe_.model.dtype,
            recipe_.dtype_auto_reason.empty()
                ? std::string()
                : " (model.dtype auto: " + recipe_.dtype_auto_reason + ")");
  if (m_.device.is_cpu()) {
    log::info("CPU: ", at::get_num_threads(), " threads for LibTorch and, through ",
              compiled_with_openmp() ? "OpenMP" : "no OpenMP (serial)", ", qtrain's own kernels");
  }

  data_ = load_training_data(recipe_, m_.model_dir);
  if (data_.tokenizer->vocab_size() > m_.model->config().vocab_size) {
    throw_error(ErrorKind::kConfig,
                "the tokenizer of " + m_.model_dir + " has " +
                    std::to_string(data_.tokenizer->vocab_size()) +
                    " tokens, more than the model's " +
                    std::to_string(m_.model->config().vocab_size) + " embeddings",
                {.field = recipe_.model.synthetic ? "model.known_config" : "model.path"});
  }
  pad_id_ = padding_id(*data_.tokenizer);
  batcher_ = std::make_unique<Batcher>(data_.train,
                                       BatchOptions{.micro_batch_size = t.micro_batch_size,
                                                    .seq_len = recipe_.data.max_seq_len,
                                                    .packing = recipe_.data.packing,
                                                    .seed = t.seed,
                                                    .shuffle = true,
                                                    .pad_id = pad_id_,
                                                    .num_shards = dp_.world_size(),
                                                    .shard = dp_.rank()},
                                       data_.train_rejected);
  if (t.objective != "sft") setup_preference();
  total_steps_ = t.max_steps > 0
                     ? t.max_steps
                     : t.epochs * ceil_div(batcher_->batches_per_epoch(), t.grad_accum_steps);

  NamedParameters named = named_adapter_parameters(m_.adapters);
  for (const auto& [name, p] : named) {
    params_.push_back(p);
    param_names_.push_back(name);
  }
  optimizer_ = make_optimizer(t.optimizer, named,
                              {.lr = t.lr,
                               .beta1 = t.beta1,
                               .beta2 = t.beta2,
                               .eps = t.eps,
                               .weight_decay = t.weight_decay});
  const int64_t warmup = t.warmup_steps > 0
                             ? t.warmup_steps
                             : static_cast<int64_t>(std::ceil(t.warmup_ratio * total_steps_));
  schedule_ = {.kind = t.scheduler,
               .base_lr = t.lr,
               .warmup_steps = warmup,
               .total_steps = total_steps_,
               .min_lr_ratio = t.min_lr_ratio};
  validate_schedule(schedule_);
  int64_t trainable = 0;
  for (const auto& p : params_) trainable += p.numel();
  log::info(trainable, " trainable parameters; ", total_steps_, " steps of ", t.grad_accum_steps,
            " x ", t.micro_batch_size, " x ", dp_.world_size(),
            " ranks = ", t.grad_accum_steps * t.micro_batch_size * dp_.world_size(),
            " samples (global batch); optimizer ", t.optimizer, " (",
            format_bytes(optimizer_->state_bytes()), " of state)");
}

void TrainingRun::setup_preference() {
  const auto& t = recipe_.training;
  for (const auto& [module, adapter] : m_.adapters) {
    if (module == "lm_head") {
      throw_error(ErrorKind::kConfig,
                  "adapts lm_head; preference objectives score whole sequences through a frozen "
                  "lm_head: adapt the decoder's projections",
                  {.field = recipe_.adapter.target_regex.empty() ? "adapter.target_modules"
                                                                 : "adapter.target_regex"});
    }
  }
  preference_ = PreferenceOptions{.objective = t.objective,
                                  .beta = t.dpo_beta,
                                  .label_smoothing = t.dpo_label_smoothing,
                                  .lambda = t.orpo_lambda,
                                  .loss_chunk_tokens = t.loss_chunk_tokens};
  if (t.objective == "dpo" && t.precompute_ref_log_probs) {
    reference_ =
        reference_log_probs_of(*m_.model, data_.train, data_.train_rejected, t.micro_batch_size,
                               recipe_.data.max_seq_len, pad_id_, t.loss_chunk_tokens);
    log::info("training.precompute_ref_log_probs: reference log-probabilities of ",
              data_.train.size(), " pairs computed once");
  }
  log::info("objective ", t.objective,
            t.objective == "dpo" ? " (beta " + std::to_string(t.dpo_beta) + ", label smoothing " +
                                       std::to_string(t.dpo_label_smoothing) +
                                       "; reference: the base with the adapters off)"
                                 : " (lambda " + std::to_string(t.orpo_lambda) + ")");
}

void TrainingRun::setup_activation_offloading() {
  const ModelConfig& c = m_.model->config();
  // QTRAIN_TEST_SIMULATE_OFFLOAD=1 (tests only): the CPU runs the offloaded path with host copies.
  const char* simulate_env = std::getenv("QTRAIN_TEST_SIMULATE_OFFLOAD");
  const bool simulate = simulate_env != nullptr && std::string(simulate_env) == "1";
  if (!m_.device.is_cuda() && !simulate) {
    log::info("training.offload_activations: the model is on ", m_.device.str(),
              ", where there is no device memory to free; nothing is offloaded");
    return;
  }
  // Every layer but the first and the last sends its input [B, T, H] to pinned host memory.
  const int64_t layers = std::max<int64_t>(c.num_hidden_layers - 2, 0);
  const int64_t host =
      layers * recipe_.training.micro_batch_size * recipe_.data.max_seq_len * c.hidden_size *
      static_cast<int64_t>(c10::elementSize(m_.model->options().dtype().toScalarType()));
  const int64_t machine = device_memory_bytes(c10::Device(c10::kCPU));
  if (machine > 0 && host > machine / 2) {
    throw_error(ErrorKind::kConfig,
                "needs up to " + gib_text(static_cast<double>(host)) +
                    " of pinned host memory per micro-batch (" + std::to_string(layers) +
                    " layer inputs of micro_batch_size x max_seq_len x hidden_size), more than "
                    "half of this machine's " +
                    gib_text(static_cast<double>(machine)) +
                    "; lower training.micro_batch_size or data.max_seq_len",
                {.field = "training.offload_activations"});
  }
  m_.model->set_activation_offloading(true, simulate);
  log::info("training.offload_activations: up to ", gib_text(static_cast<double>(host)),
            " of layer inputs in pinned host memory per micro-batch");
}

void TrainingRun::resume_from(const std::string& dir) {
  log::info("resuming from ", dir);
  TrainCheckpoint state = load_train_checkpoint(dir);
  check_checkpoint_step(state.step, total_steps_, dir + "/trainer_state.json");
  LoadedAdapter adapter = load_peft_adapter(dir);
  for (const auto& [module, slot] : m_.adapters) {
    auto found = adapter.tensors.find(module);
    if (found == adapter.tensors.end()) {
      throw_error(ErrorKind::kShape, "the checkpoint has no adapter for this module",
                  {.file = adapter.weights_file, .tensor = module});
    }
    for (const auto& [name, value] : found->second) {
      try {
        slot->load_adapter_tensor(name, value);
      } catch (const Error& e) {
        throw Error(
            e.kind(), e.message(),
            {.file = adapter.weights_file, .tensor = "base_model.model." + module + "." + name});
      }
    }
  }
  const int64_t saved_world = state.trainer_state.value("world_size", int64_t{1});
  if (saved_world != dp_.world_size()) {
    throw_error(ErrorKind::kPeer,
                "the checkpoint was written by a run of " + std::to_string(saved_world) +
                    " ranks and this run has " + std::to_string(dp_.world_size()) +
                    " (data shards and random states are per rank); resume with " +
                    std::to_string(saved_world) + " ranks",
                {.file = dir + "/trainer_state.json"});
  }
  try {
    optimizer_->load_state_dict(state.optimizer);
  } catch (const Error& e) {
    throw e.with_context({.file = dir + "/optimizer.safetensors"});
  }
  const auto& cursor = state.trainer_state.at("cursor");
  batcher_->restore({cursor.at("epoch").get<int64_t>(), cursor.at("position").get<int64_t>()});
  restore_rng_states(dp_.own_rng_states(state.rng));
  start_step_ = state.step;
  result_.skipped_steps = state.trainer_state.value("skipped_steps", int64_t{0});
  result_.first_eval_loss = state.trainer_state.value("first_eval_loss", 0.0);
  spikes_.restore(state.trainer_state.value("loss_mean", 0.0),
                  state.trainer_state.value("loss_steps", int64_t{0}));
  const std::string state_file = dir + "/trainer_state.json";
  scaler_.restore(state.trainer_state.value("loss_scale", LossScaler::kInitialScale),
                  state.trainer_state.value("loss_scale_good_steps", int64_t{0}),
                  state_file.c_str());
  last_saved_step_ = state.step;
}

void TrainingRun::run_preference_eval(int64_t step) {
  PreferenceEvalSums eval = evaluate_preference(
      *m_.model, data_.eval, data_.eval_rejected, recipe_.training.micro_batch_size,
      recipe_.data.max_seq_len, pad_id_, recipe_.training.eval_batches, *preference_, dp_.rank(),
      dp_.world_size(), /*lockstep=*/sharded_ != nullptr);
  std::vector<double> sums = {eval.loss_sum, static_cast<double>(eval.pairs)};
  sums.insert(sums.end(), eval.metric_sums.begin(), eval.metric_sums.end());
  dp_.sum(sums);
  const double pairs = std::max(sums[1], 1.0);
  const double loss = sums[0] / pairs;
  if (step == 0 || result_.first_eval_loss == 0) result_.first_eval_loss = loss;
  result_.last_eval_loss = loss;
  const std::vector<std::string> names = preference_metric_names(preference_->objective);
  nlohmann::json row = {{"step", step}, {"eval_loss", loss}, {"eval_pairs", sums[1]}};
  for (size_t m = 0; m < names.size(); ++m) row["eval_" + names[m]] = sums[2 + m] / pairs;
  log::info("eval at step ", step, ": loss ", loss, ", reward accuracy ",
            row["eval_rewards/accuracies"].get<double>(), ", margin ",
            row["eval_rewards/margins"].get<double>(), " (", static_cast<int64_t>(sums[1]),
            " pairs)");
  if (step > 0)
    result_.last_eval_reward_accuracy = row["eval_rewards/accuracies"].get<double>();
  else
    result_.first_eval_reward_accuracy = row["eval_rewards/accuracies"].get<double>();
  if (!metrics_) return;
  metrics_->append(row);
  if (tensorboard_) {
    tensorboard_->add_scalar("eval/loss", loss, step);
    for (size_t m = 0; m < names.size(); ++m) {
      tensorboard_->add_scalar("eval/" + names[m], sums[2 + m] / pairs, step);
    }
    tensorboard_->flush();
  }
}

void TrainingRun::run_eval(int64_t step) {
  if (data_.eval.empty()) return;
  if (preference_) {
    run_preference_eval(step);
    return;
  }
  EvalResult eval = evaluate(*m_.model, data_.eval, recipe_.training.micro_batch_size,
                             recipe_.data.max_seq_len, pad_id_, recipe_.training.eval_batches,
                             dp_.rank(), dp_.world_size(), recipe_.training.loss_chunk_tokens,
                             /*lockstep=*/sharded_ != nullptr);
  if (dp_.active()) {
    std::vector<double> sums{eval.loss_sum, static_cast<double>(eval.tokens)};
    dp_.sum(sums);
    eval.tokens = static_cast<int64_t>(sums[1]);
    eval.loss = eval.tokens > 0 ? sums[0] / sums[1] : 0;
    eval.perplexity = std::exp(eval.loss);
  }
  if (step == 0 || result_.first_eval_loss == 0) result_.first_eval_loss = eval.loss;
  result_.last_eval_loss = eval.loss;
  log::info("eval at step ", step, ": loss ", eval.loss, ", perplexity ", eval.perplexity, " (",
            eval.tokens, " tokens)");
  if (!metrics_) return;
  metrics_->append({{"step", step},
                    {"eval_loss", eval.loss},
                    {"eval_perplexity", eval.perplexity},
                    {"eval_tokens", eval.tokens}});
  if (tensorboard_) {
    tensorboard_->add_scalar("eval/loss", eval.loss, step);
    tensorboard_->add_scalar("eval/perplexity", eval.perplexity, step);
    tensorboard_->flush();
  }
}

void TrainingRun::save(int64_t step) {
  TrainCheckpoint state;
  state.step = step;
  const DataCursor cursor = batcher_->cursor();
  state.trainer_state = {{"cursor", {{"epoch", cursor.epoch}, {"position", cursor.position}}},
                         {"skipped_steps", result_.skipped_steps},
                         {"first_eval_loss", result_.first_eval_loss},
                         {"total_steps", total_steps_},
                         {"world_size", dp_.world_size()},
                         {"loss_mean", spikes_.mean()},
                         {"loss_steps", spikes_.count()}};
  if (scaler_.enabled()) {
    state.trainer_state["loss_scale"] = scaler_.scale();
    state.trainer_state["loss_scale_good_steps"] = scaler_.good_steps();
  }
  state.rng = capture_rng_states(cuda_index_);
  dp_.gather_rng_states(state.rng, step);
  last_saved_step_ = step;
  if (!dp_.is_main()) {
    dp_.barrier();  // rank 0 has written the checkpoint
    return;
  }
  state.optimizer = optimizer_->state_dict();
  const std::string base = recipe_.model.path;
  const nlohmann::json extra = extra_adapter_config(m_);
  const std::string dir = save_train_checkpoint(
      run_dir_, state,
      [&](const std::string& staging) {
        save_peft_adapter(staging, m_.adapters, m_.lora, base, at::kFloat, extra);
      },
      recipe_.output.keep_last);
  log::info("checkpoint ", dir);
  dp_.barrier();
}

TrainingRun::StepBatches TrainingRun::next_step_batches() {
  StepBatches out;
  std::vector<double> counts{0, 0, 0};  // loss tokens, tokens, pairs of the step, all ranks
  for (int64_t i = 0; i < recipe_.training.grad_accum_steps; ++i) {
    out.micro.push_back(batcher_->next());
    counts[0] += static_cast<double>(count_loss_tokens(out.micro.back().labels));
    counts[1] += static_cast<double>(out.micro.back().tokens);
    counts[2] += static_cast<double>(out.micro.back().pairs);
  }
  dp_.sum(counts);
  out.loss_tokens = static_cast<int64_t>(counts[0]);
  out.tokens = static_cast<int64_t>(counts[1]);
  out.pairs = static_cast<int64_t>(counts[2]);
  for (const Batch& batch : out.micro) {
    for (int64_t id : batch.example_ids) out.origins.push_back(batcher_->example(id).origin);
  }
  return out;
}

void TrainingRun::skip_all_masked_step(int64_t step, double lr, const StepBatches& batches) {
  // Every label of every micro-batch on every rank is masked: nothing to learn from, and an
  // optimizer step on zero gradients would still move the weights (momentum, weight decay).
  log::warn("step ", step + 1, " has no token to learn from (every label is masked) in samples ",
            describe_samples(batches.origins),
            "; skipped. Their responses were cut off by data.max_seq_len (raise it, or set "
            "data.overlong: drop) or the format masks them (data.train_on_inputs)");
  ++result_.skipped_steps;
  if (metrics_) {
    metrics_->append({{"step", step + 1},
                      {"skipped", true},
                      {"event", "all_masked"},
                      {"lr", lr},
                      {"samples", batches.origins}});
  }
}

at::Tensor TrainingRun::to_device(const at::Tensor& host) const {
  if (!host.defined() || !m_.device.is_cuda()) return host;
  // Pinned staging makes the copy asynchronous on the compute stream; the caching host allocator
  // keeps the pinned block alive until the copy has run.
  return host.pin_memory().to(m_.device, /*non_blocking=*/true);
}

double TrainingRun::step_units(const StepBatches& batches) const {
  return static_cast<double>(preference_ ? batches.pairs : batches.loss_tokens);
}

ForwardInputs TrainingRun::forward_inputs(const Batch& batch) const {
  // With the embedding table in host memory its rows are gathered from the host ids.
  ForwardInputs inputs{
      .input_ids = m_.model->embeddings_on_host() ? batch.input_ids : to_device(batch.input_ids),
      .position_ids = to_device(batch.position_ids)};
  if (batch.cu_seqlens.defined()) {
    // Packed rows: variable-length attention over the segments, no [T, T] mask.
    inputs.cu_seqlens = to_device(batch.cu_seqlens);
    inputs.cu_seqlens_host = batch.cu_seqlens;
    inputs.max_seqlen = batch.max_seqlen;
  } else if (batch.segment_ids.defined()) {
    inputs.segment_ids = to_device(batch.segment_ids);
  }
  return inputs;
}

at::Tensor TrainingRun::micro_batch_loss_sum(const Batch& batch) {
  const ForwardInputs inputs = forward_inputs(batch);
  if (preference_) {
    at::Tensor reference;
    if (!reference_.empty()) {
      std::vector<double> values;
      for (int side = 0; side < 2; ++side) {
        for (int64_t id : batch.example_ids) values.push_back(reference_[side][id]);
      }
      reference = to_device(at::tensor(values, at::kDouble).to(at::kFloat));
    }
    const PreferenceLoss loss =
        preference_micro_batch(*m_.model, inputs, batch, *preference_, reference);
    step_metric_sums_ =
        step_metric_sums_.defined() ? step_metric_sums_ + loss.metric_sums : loss.metric_sums;
    return loss.loss_sum;
  }
  const at::Tensor hidden = m_.model->hidden_states(inputs);
  return chunked_causal_lm_loss_sum(hidden, *m_.model->lm_head, batch.labels,
                                    recipe_.training.loss_chunk_tokens,
                                    m_.model->config().final_logit_softcapping.value_or(0.0));
}

void TrainingRun::warn_all_masked_micro_batch(int64_t step, size_t k, const StepBatches& batches) {
  std::vector<std::string> origins;
  for (int64_t id : batches.micro[k].example_ids) origins.push_back(batcher_->example(id).origin);
  log::warn("step ", step + 1, ": micro-batch ", k + 1, " of ", batches.micro.size(),
            " has no token to learn from (every label is masked) in samples ",
            describe_samples(origins),
            "; their responses were cut off by data.max_seq_len (raise it, or set "
            "data.overlong: drop) or the format masks them");
  if (metrics_) {
    metrics_->append(
        {{"step", step + 1}, {"event", "all_masked_micro_batch"}, {"samples", origins}});
  }
}

at::Tensor TrainingRun::train_step(int64_t step, const StepBatches& batches) {
  const auto& micro = batches.micro;
  // Normalising every micro-batch by the step's loss tokens (of all ranks) makes the accumulated
  // gradient, summed over ranks, that of one big batch, whatever the micro-batches' lengths.
  const double norm = step_units(batches) / scaler_.scale();
  step_metric_sums_ = at::Tensor();
  GradReducer* reducer = dp_.reducer();
  std::vector<at::Tensor> sums;
  for (size_t k = 0; k < micro.size(); ++k) {
    if (micro[k].loss_tokens == 0 && micro.size() > 1)
      warn_all_masked_micro_batch(step, k, batches);
    if (reducer && k + 1 == micro.size()) reducer->prepare();
    at::Tensor sum = micro_batch_loss_sum(micro[k]);
    (sum / norm).backward();
    sums.push_back(sum.detach());
  }
  if (reducer) reducer->finish();
  return at::stack(sums);
}

std::string TrainingRun::describe_micro_batch(const StepBatches& batches, int64_t k) const {
  std::vector<std::string> origins;
  for (int64_t id : batches.micro[k].example_ids) origins.push_back(batcher_->example(id).origin);
  return describe_samples(origins);
}

void TrainingRun::skip_overflow_step(int64_t step, double lr) {
  log::info("step ", step + 1, ": float16 gradients overflowed; step skipped, loss scale now ",
            scaler_.scale());
  optimizer_->zero_grad();
  ++result_.skipped_steps;
  if (metrics_) {
    metrics_->append({{"step", step + 1},
                      {"skipped", true},
                      {"event", "loss_scale_backoff"},
                      {"lr", lr},
                      {"loss_scale", scaler_.scale()}});
  }
}

void TrainingRun::skip_nonfinite_step(int64_t step, double lr, const StepValues& values,
                                      const std::string& nonfinite_where,
                                      const StepBatches& batches) {
  const double loss = values.loss;
  std::string what = "non-finite " + std::string(std::isfinite(loss) ? "gradient" : "loss") +
                     " at step " + std::to_string(step + 1) + " (loss " + std::to_string(loss) +
                     ", grad norm " + std::to_string(values.grad_norm) + ")";
  if (!nonfinite_where.empty()) {
    what += " in " + nonfinite_where;
  } else if (std::isfinite(loss)) {
    const std::string param = first_nonfinite_gradient(param_names_, params_);
    what += (param.empty() ? std::string(" on another rank") : " first in " + param) +
            " (samples " + describe_samples(batches.origins) + ")";
  } else {
    what += " on another rank";
  }
  if (recipe_.training.on_nonfinite == "stop") {
    throw_error(ErrorKind::kDiverged,
                what + "; lower training.lr, check the data, or set training.on_nonfinite=skip",
                {.field = "training.on_nonfinite"});
  }
  log::warn(what, ": step skipped (training.on_nonfinite=skip)");
  optimizer_->zero_grad();
  ++result_.skipped_steps;
  if (metrics_) {
    metrics_->append({{"step", step + 1},
                      {"skipped", true},
                      {"event", "nonfinite"},
                      {"lr", lr},
                      {"samples", batches.origins}});
  }
}

void TrainingRun::watch_loss_spike(int64_t step, double loss, const StepBatches& batches) {
  const std::optional<double> mean = spikes_.observe(loss);
  if (!mean) return;
  char ratio[32];
  std::snprintf(ratio, sizeof(ratio), "%.1f", loss / *mean);
  log::warn("loss spike at step ", step + 1, ": ", loss, " is ", ratio, " times the recent mean ",
            *mean, "; samples ", describe_samples(batches.origins),
            ". If it recurs or the loss does not come back down: lower training.lr, raise "
            "training.warmup_steps or training.max_grad_norm's clipping, or inspect these "
            "samples");
  if (metrics_) {
    metrics_->append({{"step", step + 1},
                      {"event", "loss_spike"},
                      {"value", loss},
                      {"recent_mean", *mean},
                      {"samples", batches.origins}});
  }
}

void TrainingRun::log_step(int64_t done, double lr, const StepValues& values,
                           const StepBatches& batches, double seconds) {
  const double loss = values.loss;
  const auto& t = recipe_.training;
  if (!metrics_ || (done % std::max<int64_t>(t.log_every, 1) != 0 && done != total_steps_)) return;
  const MemoryUsage mem = memory_usage(m_.device);
  const double tokens = static_cast<double>(batches.tokens);
  StepReport report{.step = done,
                    .total = total_steps_,
                    .loss = loss,
                    .lr = lr,
                    .grad_norm = values.grad_norm,
                    .tokens_per_second = tokens / seconds,
                    .seconds_per_step = seconds,
                    .memory_bytes = mem.current};
  std::string line = format_progress(report);
  const std::vector<std::string> names =
      preference_ ? preference_metric_names(preference_->objective) : std::vector<std::string>{};
  if (!values.metrics.empty()) {
    char extra[96];
    std::snprintf(extra, sizeof(extra), " | acc %.2f | margin %.4f", values.metrics[3],
                  values.metrics[2]);
    line += extra;
  }
  std::fprintf(stderr, "%s\n", line.c_str());
  nlohmann::json row = {{"step", done},
                        {"loss", loss},
                        {"lr", lr},
                        {"grad_norm", values.grad_norm},
                        {"tokens", batches.tokens},
                        {"loss_tokens", batches.loss_tokens},
                        {"tokens_per_second", tokens / seconds},
                        {"step_seconds", seconds},
                        {"memory_bytes", mem.current},
                        {"peak_memory_bytes", mem.peak},
                        {"offloaded_host_bytes", m_.model->offloaded_peak_bytes()}};
  if (sharded_) row.update(sharded_->step_metrics(*m_.model));
  for (size_t m = 0; m < values.metrics.size() && m < names.size(); ++m) {
    row[names[m]] = values.metrics[m];
  }
  if (preference_) row["pairs"] = batches.pairs;
  metrics_->append(row);
  if (tensorboard_) {
    tensorboard_->add_scalar("train/loss", loss, done);
    tensorboard_->add_scalar("train/lr", lr, done);
    tensorboard_->add_scalar("train/grad_norm", values.grad_norm, done);
    tensorboard_->add_scalar("train/tokens_per_second", tokens / seconds, done);
    tensorboard_->add_scalar("train/memory_bytes", static_cast<double>(mem.current), done);
    for (size_t m = 0; m < values.metrics.size() && m < names.size(); ++m) {
      tensorboard_->add_scalar("train/" + names[m], values.metrics[m], done);
    }
    tensorboard_->flush();
  }
}

std::optional<TrainingRun::StepValues> TrainingRun::apply_update(int64_t step, double lr,
                                                                 const StepBatches& batches,
                                                                 const at::Tensor& micro_sums) {
  at::Tensor norm;
  {
    NoSyncScope no_sync(m_.device);
    if (scaler_.enabled()) unscale_gradients(params_, scaler_.scale());
    norm = clip_grad_norm_on_device(params_, recipe_.training.max_grad_norm);
  }
  // The step's one device-to-host read: every micro-batch's loss sum and the gradient norm.
  std::vector<at::Tensor> read = {micro_sums.to(at::kDouble), norm.to(at::kDouble).view({1})};
  if (step_metric_sums_.defined()) read.push_back(step_metric_sums_.to(at::kDouble));
  const at::Tensor host = at::cat(read).to(at::kCPU);
  const double* values = host.data_ptr<double>();
  const int64_t micro = micro_sums.size(0);
  std::vector<double> loss_sum{0};
  std::string nonfinite_where;
  for (int64_t k = 0; k < micro; ++k) {
    loss_sum[0] += values[k];
    if (!std::isfinite(values[k]) && nonfinite_where.empty()) {
      nonfinite_where = "micro-batch " + std::to_string(k + 1) + " of " + std::to_string(micro) +
                        " (samples " + describe_micro_batch(batches, k) + ")";
    }
  }
  // Preference metrics travel with the loss sum: [loss, metrics...], summed over ranks.
  for (int64_t m = micro + 1; m < host.numel(); ++m) loss_sum.push_back(values[m]);
  dp_.sum(loss_sum);
  const double units = step_units(batches);
  StepValues out{.loss = loss_sum[0] / units, .grad_norm = values[micro]};
  for (size_t m = 1; m < loss_sum.size(); ++m) out.metrics.push_back(loss_sum[m] / units);
  const bool grads_finite = std::isfinite(out.grad_norm);
  if (std::isfinite(out.loss) && !grads_finite && !scaler_.update(false)) {
    skip_overflow_step(step, lr);
    return std::nullopt;
  }
  if (!std::isfinite(out.loss) || !grads_finite) {
    skip_nonfinite_step(step, lr, out, nonfinite_where, batches);
    return std::nullopt;
  }
  scaler_.update(true);
  watch_loss_spike(step, out.loss, batches);
  optimizer_->step();
  optimizer_->zero_grad();
  return out;
}

bool TrainingRun::run_step(int64_t step) {
  const double lr = lr_at(schedule_, step);
  optimizer_->set_lr(lr);
  const auto started = Clock::now();
  if (sharded_) sharded_->begin_step();
  const StepBatches batches = next_step_batches();
  if (batches.loss_tokens == 0) {
    skip_all_masked_step(step, lr, batches);
    return false;
  }
  at::Tensor micro_sums;
  {
    NoSyncScope no_sync(m_.device);
    micro_sums = train_step(step, batches);
  }
  const std::optional<StepValues> values = apply_update(step, lr, batches, micro_sums);
  if (!values) return false;
  result_.last_loss = values->loss;
  log_step(step + 1, lr, *values, batches, seconds_since(started));
  return true;
}

void TrainingRun::run_profiled_step(int64_t step) {
  StepProfiler profiler(m_.device.is_cuda());
  run_step(step);
  const std::string name = "profile-step-" + std::to_string(step + 1);
  const std::string path =
      profiler.finish(run_dir_ + "/" + name, "qtrain step " + std::to_string(step + 1) + " on " +
                                                 m_.device.str() + " in " + recipe_.model.dtype);
  log::info("profile of step ", step + 1, " written to ", path, " and ", name, ".trace.json");
}

TrainResult TrainingRun::run() {
  InterruptGuard interrupt;
  profile_step_ = requested_profile_step();
  dp_ = DataParallel::join(recipe_, launch_env(), options_.resume);
  // Rank 0 alone looks at and writes the run directory; the others follow its decisions.
  if (dp_.is_main()) result_.run_lock = RunLock::acquire(run_dir_);
  std::optional<std::string> checkpoint;
  if (options_.resume && dp_.is_main()) {
    // What a killed run left half-written or half-removed (it held the lock we now hold).
    remove_stale_checkpoint_temps(run_dir_ + "/checkpoints");
    checkpoint = latest_checkpoint(run_dir_);
    if (!checkpoint) log::warn("--resume: ", run_dir_, " has no checkpoint; starting fresh");
  }
  const std::string shared = dp_.from_main("resume-from", checkpoint.value_or(""));
  if (!shared.empty()) checkpoint = shared;
  const RunStart start = checkpoint        ? RunStart::kResume
                         : options_.resume ? RunStart::kRestart
                                           : RunStart::kFresh;
  if (dp_.is_main()) check_run_directory(recipe_, start);
  dp_.barrier();
  setup();
  if (profile_step_ > total_steps_) {
    throw_error(ErrorKind::kConfig,
                "QTRAIN_PROFILE_STEP=" + std::to_string(profile_step_) + " but the run has " +
                    std::to_string(total_steps_) + " steps",
                {.field = "QTRAIN_PROFILE_STEP"});
  }
  // The checkpoint is loaded and checked before the run directory records a resume, so a resume
  // that fails leaves run_info.json and recipe.resumed.yaml as they were.
  if (checkpoint) resume_from(*checkpoint);
  if (dp_.is_main()) prepare_run_directory(recipe_, start, options_.command_line);
  dp_.barrier();
  dp_.broadcast(params_);
  dp_.attach(params_, recipe_.distributed.bucket_mb);
  if (dp_.is_main()) {
    metrics_ = std::make_unique<MetricsLog>(run_dir_, start_step_);
    if (recipe_.output.tensorboard) {
      tensorboard_ = std::make_unique<TensorBoardWriter>(run_dir_ + "/tensorboard");
    }
  }
  result_.run_dir = run_dir_;
  result_.rank = dp_.rank();
  result_.world_size = dp_.world_size();
  result_.total_steps = total_steps_;
  if (start_step_ == 0) run_eval(0);

  const auto& t = recipe_.training;
  for (int64_t step = start_step_; step < total_steps_; ++step) {
    if (step + 1 == profile_step_ && dp_.is_main()) {
      run_profiled_step(step);
    } else {
      run_step(step);
    }
    const int64_t done = step + 1;
    result_.steps_done = done;
    if (t.eval_every > 0 && done % t.eval_every == 0 && done != total_steps_) run_eval(done);
    const bool stop = dp_.any(InterruptGuard::requested() ||
                              (options_.stop_after_step > 0 && done == options_.stop_after_step));
    if ((recipe_.output.save_every > 0 && done % recipe_.output.save_every == 0) || stop) {
      save(done);
    }
    if (stop && done != total_steps_) {
      result_.interrupted = true;
      if (dp_.is_main())
        log::warn("stopped after step ", done, InterruptGuard::requested() ? " (signal)" : "",
                  "; continue with --resume");
      return result_;
    }
  }
  result_.steps_done = total_steps_;
  run_eval(total_steps_);
  if (last_saved_step_ != total_steps_) save(total_steps_);
  if (!dp_.is_main()) return result_;
  save_peft_adapter(run_dir_ + "/adapter", m_.adapters, m_.lora, recipe_.model.path, at::kFloat,
                    extra_adapter_config(m_));
  log::info("adapter written to ", run_dir_, "/adapter");
  return result_;
}

}  // namespace

TrainResult train(const Recipe& recipe, const TrainOptions& options) {
  TrainingRun run(recipe, options);
  return run.run();
}

}  // namespace qtrain

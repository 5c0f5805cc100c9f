// The YAML recipe that drives a qtrain run: typed sections with defaults from the QLoRA paper and
// common practice, strict parsing (unknown keys, wrong types, out-of-range values and
// contradictions are errors naming the dotted key and the line), command-line overrides, and the
// fully resolved recipe back as YAML.
//
// Paths (model.path, data.path, data.eval_path, adapter.init_from) are kept exactly as written;
// relative ones are resolved against the current working directory by whoever opens them, not
// against the recipe file's directory, so `qtrain recipes/x.yaml` run from the repository root
// finds `recipes/data/...`.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace qtrain {

struct ModelSection {
  // An HF model directory, or "builtin:tiny" / "builtin:micro": a tiny random llama model that
  // qtrain generates (models/tiny_model.h presets).
  std::string path;
  // llama2-7b | llama2-13b | llama2-70b | llama3-8b | llama3-70b | mistral-7b | qwen2.5-7b:
  // the architecture --dry-run estimates when `path` has no config.json (known_model_config).
  std::string known_config;
  // compute dtype: bfloat16 | float16 | float32 | auto: bfloat16 on CUDA and on CPUs with bf16
  // matrix instructions (AMX, AVX512-BF16), float32 on other CPUs; parsing resolves auto. A parsed
  // recipe that does not name it gets auto; a Recipe built in code keeps bfloat16.
  std::string dtype = "bfloat16";
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  // Benchmarks: weights drawn by training.seed on the device and quantized there
  // (models/synthetic_model.h) instead of read; the shapes are known_config's (else path's), and
  // path still supplies the tokenizer.
  bool synthetic = false;
  // The input embedding table stays in host memory: each batch's rows are gathered there and only
  // they are copied to the device (saves V x H x dtype bytes of GPU memory; models with tied
  // embeddings need the table on the device for lm_head and refuse it).
  bool embeddings_on_host = false;
};

struct QuantizationSection {
  // nf4 | fp4 | int8 (bitsandbytes blockwise) | int4 (group-wise asymmetric INT4, the QA-LoRA
  // base) | none (dense base in model.dtype)
  std::string type = "nf4";
  int64_t blocksize = 64;    // nf4/fp4/int8: power of two, 64..4096
  bool double_quant = true;  // nf4/fp4 only; resolved to false for the other types
  int64_t group_size = 64;   // int4 only: 32 | 64 | 128
  std::vector<std::string> skip_modules = {"lm_head"};  // kept dense (is_skipped_module rules)
};

struct AdapterSection {
  std::string type = "lora";  // lora | qalora
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.05;
  bool rslora = false;  // scaling alpha / sqrt(r) instead of alpha / r
  // Module names or name suffixes, or the single entry "all-linear" (every linear but lm_head).
  // Resolved to [] when target_regex is set and target_modules was not given.
  std::vector<std::string> target_modules = {"all-linear"};
  std::string target_regex;  // PEFT semantics: the full module name must match
  // bfloat16 | float32 | auto: float32 with a float32 model, else bfloat16 (the default of a
  // parsed recipe; a Recipe built in code keeps bfloat16).
  std::string dtype = "bfloat16";
  std::string init_from;  // an existing PEFT adapter directory to start from
};

struct DataSection {
  std::string path;       // JSONL, JSON or .txt
  std::string eval_path;  // optional; else eval_fraction of `path` is held out
  // alpaca | completion | text | chat | preference (prompt, chosen, rejected: training.objective
  // dpo or orpo; data/preference_pairs.h)
  std::string format = "alpaca";
  // YAML key "template". Format chat: the chat template (data/prompt_format.h chat_templates()),
  // or auto: the one the model's tokenizer_config.json chat_template is (an error when it is none
  // qtrain knows); alpaca, completion and text have their own fixed layout and ignore it.
  std::string template_name = "alpaca";
  // Renames of the format's fields (data/prompt_format.h prompt_format_fields): {output: answer}.
  std::map<std::string, std::string> fields;
  int64_t max_seq_len = 512;
  bool packing = false;
  std::string overlong = "truncate";  // truncate | drop
  bool train_on_inputs = false;       // false: loss only on the response tokens
  bool add_eos = true;
  double eval_fraction = 0.05;
  int64_t eval_max_samples = 256;  // 0: no cap
  bool skip_bad_lines = false;
  // The most bytes one record (.jsonl line, .json element, .txt file) may take; a longer one is
  // a bad record. Tokenizing costs memory in proportion (SentencePiece: ~200 bytes per byte).
  int64_t max_record_bytes = 8 * 1024 * 1024;
};

struct TrainingSection {
  // sft: the next-token loss of the responses. dpo | orpo: preference tuning on pairs of
  // data.format preference (trainer/preference_loss.h); micro_batch_size counts pairs.
  std::string objective = "sft";
  double dpo_beta = 0.1;             // DPO's beta: how far the policy may move from the reference
  double dpo_label_smoothing = 0.0;  // DPO's eps in [0, 0.5): pairs assumed mislabelled
  double orpo_lambda = 0.1;          // ORPO's weight of the odds-ratio term
  // dpo: every pair's reference log-probabilities computed once before training (the reference,
  // the base with the adapters off, never changes) instead of a reference pass per micro-batch.
  bool precompute_ref_log_probs = false;
  int64_t micro_batch_size = 1;
  int64_t grad_accum_steps = 16;
  int64_t max_steps = 0;  // > 0 wins over epochs
  int64_t epochs = 1;
  double lr = 2e-4;
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  std::string optimizer = "paged_adamw";  // adamw | paged_adamw | adamw_8bit | paged_adamw_8bit
  std::string scheduler = "constant";     // constant | linear | cosine
  int64_t warmup_steps = 0;               // at most one of warmup_steps / warmup_ratio
  double warmup_ratio = 0.0;
  double min_lr_ratio = 0.0;   // the decaying schedules end at lr * min_lr_ratio
  double max_grad_norm = 0.3;  // 0 disables clipping
  bool gradient_checkpointing = true;
  // The loss runs the output projection and cross-entropy over chunks of this many loss-carrying
  // tokens, so the batch's full-vocabulary logits never exist (trainer/chunked_loss.h); 0: one
  // chunk holding every loss token of the micro-batch.
  int64_t loss_chunk_tokens = 1024;
  // Deterministic kernels on CUDA (and the cuBLAS workspace setting they need); CPU runs are
  // reproducible bit for bit either way.
  bool deterministic = false;
  // Inputs saved at checkpointed layer boundaries move to pinned host memory (CUDA only).
  bool offload_activations = false;
  uint64_t seed = 42;
  int64_t eval_every = 0;    // 0: evaluate only at the end
  int64_t eval_batches = 0;  // 0: every eval batch
  int64_t log_every = 1;
  std::string on_nonfinite = "stop";  // stop | skip (the step)
};

struct OutputSection {
  std::string dir = "runs/qtrain";
  int64_t save_every = 0;  // 0: save only at the end
  int64_t keep_last = 2;
  bool tensorboard = true;
  bool overwrite = false;
  // YAML key "export": formats qexport writes into <dir>/export/ once training has finished:
  // adapter | merged-bf16 | merged-fp16 | nf4 | gguf[:f16|q8_0|q4_0|q4_k_m] | gptq-int4 (qalora).
  std::vector<std::string> exports;
};

// Data parallelism across the ranks a launcher started (torchrun variables, Slurm, or
// qtrain --nproc); ignored by a single process.
struct DistributedSection {
  std::string backend = "auto";  // auto (nccl on CUDA, gloo on CPU) | nccl | gloo | none
  // A peer that dies or stops answering makes the others exit with an error after this long;
  // it also bounds the rendezvous and waiting at a checkpoint barrier.
  int64_t timeout_s = 600;
  int64_t bucket_mb = 25;  // gradient all-reduce bucket size (float32 MiB)
  // ddp: every rank holds the whole quantized base. shard: each rank keeps 1/N of every decoder
  // layer's quantized bytes and all-gathers a projection's weight just before it is used.
  std::string strategy = "ddp";
  int64_t prefetch = 1;  // shard: gathers issued ahead of the one in use (0: none)
};

struct Recipe {
  ModelSection model;
  QuantizationSection quantization;
  AdapterSection adapter;
  DataSection data;
  TrainingSection training;
  OutputSection output;
  DistributedSection distributed;
  // Provenance, not settings: ignored by operator==.
  std::string source;                  // the file it came from
  std::vector<std::string> overrides;  // as given on the command line
  // model.dtype was auto and parsing chose it: why ("CUDA", "AVX512-BF16", "no bf16 ...").
  std::string dtype_auto_reason;
};

// Settings equality: two recipes compare equal when every section field does, whatever their
// source and overrides.
bool operator==(const Recipe& a, const Recipe& b);
inline bool operator!=(const Recipe& a, const Recipe& b) {
  return !(a == b);
}

// Parses and validates a recipe. `overrides` are "section.key=value" strings (the value is read
// as a YAML scalar or flow node: training.lr=1e-4, adapter.target_modules=[q_proj,v_proj],
// data.fields={instruction: question}; map entries also as data.fields.instruction=question),
// applied after the file and before validation; a key the file lacks is fine.
// Throws Error(kConfig) naming the dotted key and the 1-based line (ErrorContext field/line; the
// rendered message reads "file:LINE: field 'training.lr': ..."), or citing the override that set
// the value; Error(kUsage) for an override without '=' or with an unknown key; Error(kIo) when
// the file cannot be read.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});
Recipe parse_recipe(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides = {});

// The fully resolved recipe: every key of every section, defaults filled, in schema order.
// parse_recipe(recipe_to_yaml(r), ...) == r.
std::string recipe_to_yaml(const Recipe& recipe);

// The accepted data.template names: "alpaca" and the chat templates.
const std::vector<std::string>& recipe_data_templates();
// The entries output.export accepts.
const std::vector<std::string>& recipe_export_formats();

}  // namespace qtrain

#include "trainer/memory_estimate.h"

#include "core/dtype.h"
#include "core/int_math.h"
#include "models/hf_names.h"
#include "models/quantized_loader.h"
#include "models/quantized_memory.h"
#include "quant/frozen_linear.h"
#include "trainer/adapter_targets.h"
#include "trainer/optim/state_memory.h"

#include <algorithm>
#include <cstdio>

namespace qtrain {
namespace {

int64_t dtype_bytes(const std::string& name) {
  return static_cast<int64_t>(element_size(scalar_type_from_name(name)));
}

// One linear [out, in] as quant/int4_group.h holds it: codes uint8 [out, in/2], scales and
// zeros float32 [out, in/group_size].
int64_t int4_linear_bytes(int64_t in, int64_t out, int64_t group_size) {
  return out * ceil_div(in, 2) + 2 * 4 * out * ceil_div(in, group_size);
}

// int4 and none: the linear weights priced by `linear_bytes`, the rest dense in the compute dtype.
template <class LinearBytes>
int64_t dense_rest_plus(const ModelConfig& config, const QuantizationSection& q, int64_t a,
                        LinearBytes&& linear_bytes) {
  int64_t total = 0;
  std::vector<LinearModule> linears = linear_modules(config);
  for (const LinearModule& m : linears) {
    const bool quantized = q.type != "none" && !is_skipped_module(m.name, q.skip_modules);
    total += quantized ? linear_bytes(m) : m.in_features * m.out_features * a;
  }
  int64_t all_params = 0;
  for (const TensorSpec& spec : hf_tensor_specs(config)) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    all_params += numel;
  }
  int64_t linear_params = 0;
  for (const LinearModule& m : linears) linear_params += m.in_features * m.out_features;
  return total + (all_params - linear_params) * a;
}

int64_t base_weight_bytes(const Recipe& recipe, const ModelConfig& config) {
  const QuantizationSection& q = recipe.quantization;
  const int64_t a = dtype_bytes(recipe.model.dtype);
  if (q.type == "int4") {
    return dense_rest_plus(config, q, a, [&](const LinearModule& m) {
      return int4_linear_bytes(m.in_features, m.out_features, q.group_size);
    });
  }
  if (q.type == "none") return dense_rest_plus(config, q, a, [](const LinearModule&) { return 0; });
  QuantConfig quant;
  quant.type = quant_type_from_name(q.type);
  quant.blocksize = q.blocksize;
  quant.double_quant = q.double_quant;
  return quantized_model_bytes(config, quant, q.skip_modules,
                               scalar_type_from_name(recipe.model.dtype))
      .total();
}

// Optimizer bytes for one trainable tensor of `n` values.
int64_t optimizer_bytes(int64_t n, const std::string& optimizer) {
  constexpr int64_t kMin8bitSize = 4096;
  constexpr int64_t kStateBlocksize = 256;
  const bool eight_bit = optimizer == "adamw_8bit" || optimizer == "paged_adamw_8bit";
  if (!eight_bit || n < kMin8bitSize) return 2 * 4 * n;
  return 2 * (n + ceil_div(n, kStateBlocksize) * 4);
}

// Bytes the adapters of `targets` save for backward per token (see the header's formula).
int64_t adapter_bytes_per_token(const Recipe& recipe, const std::vector<LinearModule>& targets) {
  const int64_t a = dtype_bytes(recipe.model.dtype);
  const int64_t ad = dtype_bytes(recipe.adapter.dtype);
  const AdapterSection& adapter = recipe.adapter;
  int64_t bytes = 0;
  for (const LinearModule& m : targets) {
    bytes += adapter.r * ad;
    if (adapter.dropout > 0 || ad != a) bytes += m.in_features * ad;
    if (adapter.dropout > 0) bytes += m.in_features;
    if (adapter.type == "qalora")
      bytes += ceil_div(m.in_features, recipe.quantization.group_size) * ad;
  }
  return bytes;
}

// Bytes saved for backward per token by one full decoder layer without its adapters.
int64_t base_layer_bytes_per_token(const Recipe& recipe, const ModelConfig& c) {
  const int64_t a = dtype_bytes(recipe.model.dtype);
  const int64_t h = c.hidden_size;
  const int64_t hd = c.head_dim;
  return a * (2 * h + (c.num_attention_heads + 2 * c.num_key_value_heads) * hd +
              c.num_attention_heads * hd + 2 * h + 4 * c.intermediate_size) +
         4 * c.num_attention_heads + 2 * 4;
}

bool on_cuda(const Recipe& recipe) {
  return recipe.model.device != "cpu";
}

// Packed rows run through ATen's variable-length flash kernel only on CUDA, in bfloat16 or
// float16, with head_dim a multiple of 8 up to 256 (models/varlen_attention.h); anywhere else each
// segment is its own scaled_dot_product_attention, whose saved output and the concatenation of
// all of them both stay alive: the attention output is kept twice.
int64_t per_segment_attention_bytes_per_token(const Recipe& recipe, const ModelConfig& c) {
  const bool flash = on_cuda(recipe) && recipe.model.dtype != "float32" && c.head_dim % 8 == 0 &&
                     c.head_dim <= 256;
  if (!recipe.data.packing || flash) return 0;
  return dtype_bytes(recipe.model.dtype) * c.num_attention_heads * c.head_dim;
}

bool offloads_activations(const Recipe& recipe) {
  return recipe.training.offload_activations && recipe.training.gradient_checkpointing &&
         on_cuda(recipe);
}

// With offloading the device keeps the first and last layers' inputs, plus the one coming back
// and the one prefetched during backward.
constexpr int64_t kOffloadDeviceInputs = 4;

bool is_quantized(const Recipe& recipe, const LinearModule& m) {
  return recipe.quantization.type != "none" &&
         !is_skipped_module(m.name, recipe.quantization.skip_modules);
}

// Bytes of `m`'s weight dequantized at once: whole, or in row slices of at most
// kFrozenSliceElements (quant/frozen_linear.h) when larger.
int64_t dequantized_bytes(const LinearModule& m, int64_t a) {
  const int64_t whole = m.in_features * m.out_features;
  if (whole <= kFrozenSliceElements) return whole * a;
  return std::max<int64_t>(1, kFrozenSliceElements / m.in_features) * m.in_features * a;
}

// What forward and backward hold, per token unless named bytes.
struct ActivationTerms {
  int64_t kept = 0;     // what forward leaves for backward: checkpointed inputs or every layer
  int64_t largest = 0;  // the recomputed layer with checkpointing, else 0 (in `kept`)
  int64_t head = 0;     // final norm (+ lm_head adapters)
  // Bytes, not per token: the largest quantized decoder projection dequantized into model.dtype
  // ([out, in] or a row slice of it, alive while its matmul runs in forward and in backward).
  int64_t dequantized_weight = 0;
};

ActivationTerms activation_terms(const Recipe& recipe, const ModelConfig& config,
                                 const std::vector<LinearModule>& targets) {
  const int64_t layers = config.num_hidden_layers;
  std::vector<std::vector<LinearModule>> layer_targets(layers);
  std::vector<LinearModule> outside_layers;  // lm_head
  for (const LinearModule& m : targets) {
    int64_t layer = 0;
    while (layer < layers && m.name.rfind(hf_layer_prefix(layer), 0) != 0) ++layer;
    (layer < layers ? layer_targets[layer] : outside_layers).push_back(m);
  }
  const int64_t a = dtype_bytes(recipe.model.dtype);
  const int64_t base_layer = base_layer_bytes_per_token(recipe, config) +
                             per_segment_attention_bytes_per_token(recipe, config);
  int64_t all_layers = 0;
  int64_t largest_layer = 0;
  for (const auto& in_layer : layer_targets) {
    const int64_t full = base_layer + adapter_bytes_per_token(recipe, in_layer);
    all_layers += full;
    largest_layer = std::max(largest_layer, full);
  }
  ActivationTerms t;
  t.head = a * 2 * config.hidden_size + 4 + adapter_bytes_per_token(recipe, outside_layers);
  if (recipe.training.gradient_checkpointing) {
    const int64_t kept_inputs = offloads_activations(recipe) ? kOffloadDeviceInputs : layers;
    t.kept = kept_inputs * a * config.hidden_size;
    t.largest = largest_layer;
  } else {
    t.kept = all_layers;
  }
  for (const LinearModule& m : linear_modules(config)) {
    if (m.name != "lm_head" && is_quantized(recipe, m)) {
      t.dequantized_weight = std::max(t.dequantized_weight, dequantized_bytes(m, a));
    }
  }
  return t;
}

std::string gib(int64_t bytes) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f", static_cast<double>(bytes) / (1LL << 30));
  return buffer;
}

}  // namespace

MemoryEstimate estimate_memory(const Recipe& recipe, const ModelConfig& config) {
  MemoryEstimate e;
  e.base_weights = base_weight_bytes(recipe, config);
  if (recipe.model.embeddings_on_host && on_cuda(recipe)) {
    e.host_embeddings = config.vocab_size * config.hidden_size * dtype_bytes(recipe.model.dtype);
    e.base_weights -= e.host_embeddings;
  }

  const std::vector<LinearModule> targets = adapter_targets(config, recipe.adapter);
  const int64_t r = recipe.adapter.r;
  const bool qalora = recipe.adapter.type == "qalora";
  const std::string& optimizer = recipe.training.optimizer;
  const bool paged = on_cuda(recipe) && optimizer.rfind("paged_", 0) == 0;
  for (const LinearModule& m : targets) {
    const int64_t a_in =
        qalora ? ceil_div(m.in_features, recipe.quantization.group_size) : m.in_features;
    const int64_t a_numel = r * a_in;            // lora_A [r, in] (qalora: [r, in/group])
    const int64_t b_numel = m.out_features * r;  // lora_B [out, r]
    e.adapter_param_count += a_numel + b_numel;
    for (const int64_t n : {a_numel, b_numel}) {
      // float32 masters of adapters kept in another dtype (trainer/optim/optimizer.h)
      const int64_t bytes =
          optimizer_bytes(n, optimizer) + (recipe.adapter.dtype != "float32" ? 4 * n : 0);
      e.optimizer_states += bytes;
      if (paged && n >= kPagedMinNumel) e.paged_states += bytes;
    }
  }
  e.adapter_params = e.adapter_param_count * dtype_bytes(recipe.adapter.dtype);
  e.adapter_grads = e.adapter_params;

  // Preference objectives run each pair's two sides as rows of one micro-batch.
  const int64_t rows_per_sample = recipe.training.objective == "sft" ? 1 : 2;
  const int64_t tokens =
      recipe.training.micro_batch_size * rows_per_sample * recipe.data.max_seq_len;
  const int64_t a = dtype_bytes(recipe.model.dtype);
  const ActivationTerms t = activation_terms(recipe, config, targets);
  // Backward of a layer: while its saved tensors are still alive it holds either a dequantized
  // weight (grad_input = grad_out x W) or the two [tokens, I] gradients the gate * up product
  // sends to gate and up, whichever is larger.
  const int64_t backward_working_set =
      std::max(t.dequantized_weight, tokens * 2 * a * config.intermediate_size);
  e.activations = tokens * (t.kept + t.largest + t.head) + backward_working_set;
  if (offloads_activations(recipe)) {
    const int64_t offloaded = std::max<int64_t>(config.num_hidden_layers - 2, 0);
    e.host_activations = tokens * offloaded * config.hidden_size * a;
  }
  const int64_t chunk = recipe.training.loss_chunk_tokens > 0
                            ? std::min(recipe.training.loss_chunk_tokens, tokens)
                            : tokens;
  // Per chunk: lm_head's output [C, V], which becomes its own gradient (a LoRA head holds up to
  // three such tensors), a float32 block of kLossFloatBlockRows rows when the output is not
  // float32, the chunk rows' gradient [C, H] and a quantized head's dequantized weight [V, H];
  // for the whole batch, the gathered loss rows and their gradient, 2 [tokens, H].
  constexpr int64_t kLossFloatBlockRows = 128;  // trainer/chunked_loss.cpp
  int64_t head_outputs = 1;
  int64_t head_dequantized = 0;
  for (const LinearModule& m : linear_modules(config)) {
    if (m.name != "lm_head") continue;
    if (is_quantized(recipe, m)) head_dequantized = dequantized_bytes(m, a);
    if (is_adapter_target(m.name, recipe.adapter)) head_outputs = 3;
  }
  const int64_t float_block = a == 4 ? 0 : std::min(chunk, kLossFloatBlockRows) * 4;
  e.logits = chunk * config.vocab_size * head_outputs * a + float_block * config.vocab_size +
             chunk * config.hidden_size * a + head_dequantized +
             tokens * 2 * config.hidden_size * a;

  // The loss runs after forward, when only what forward keeps is alive, and is gone before
  // backward recomputes a layer: the peak is the larger of the two phases, not their sum.
  const int64_t loss_phase = tokens * (t.kept + t.head) + e.logits;
  e.total = e.base_weights + e.adapter_params + e.adapter_grads + e.optimizer_states +
            std::max(e.activations, loss_phase);
  return e;
}

std::string MemoryEstimate::to_table() const {
  const std::pair<const char*, int64_t> rows[] = {
      {"base weights", base_weights},   {"adapter params", adapter_params},
      {"adapter grads", adapter_grads}, {"optimizer states", optimizer_states},
      {"activations", activations},     {"logits", logits},
  };
  std::string table;
  char line[96];
  std::snprintf(line, sizeof line, "%-18s %10s\n", "component", "GiB");
  table += line;
  for (const auto& [name, bytes] : rows) {
    std::snprintf(line, sizeof line, "%-18s %10s\n", name, gib(bytes).c_str());
    table += line;
  }
  std::snprintf(line, sizeof line, "%-18s %10s\n", "total", gib(total).c_str());
  table += line;
  if (host_embeddings + host_activations > 0) {
    std::snprintf(line, sizeof line, "%-18s %10s\n", "host embeddings",
                  gib(host_embeddings).c_str());
    table += line;
    std::snprintf(line, sizeof line, "%-18s %10s\n", "host activations",
                  gib(host_activations).c_str());
    table += line;
  }
  return table;
}

}  // namespace qtrain

#include "trainer/shard_memory.h"

#include "core/error.h"
#include "core/int_math.h"
#include "models/hf_names.h"
#include "models/quantized_loader.h"
#include "quant/memory.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <vector>

namespace qtrain {
namespace {

// The alignment gaps FlatQuantizedLayout may leave: at most 15 bytes before each of 5 pieces.
constexpr int64_t kAlignmentSlack = 15 * 5;

std::string gib(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  return text;
}

}  // namespace

ShardedBaseMemory sharded_base_memory(const Recipe& recipe, const ModelConfig& config,
                                      const MemoryEstimate& estimate, int64_t world_size) {
  const auto& q = recipe.quantization;
  if (q.type != "nf4" && q.type != "fp4" && q.type != "int8") {
    throw_error(ErrorKind::kConfig,
                "shard splits the decoder layers' quantized projections (quantization.type nf4, "
                "fp4 or int8), and quantization.type " +
                    q.type + " has none; use ddp",
                {.field = "distributed.strategy"});
  }
  if (world_size < 1) throw_error(ErrorKind::kUsage, "the number of ranks must be at least 1");
  const QuantConfig quant{.type = quant_type_from_name(q.type),
                          .blocksize = q.blocksize,
                          .double_quant = q.double_quant};
  ShardedBaseMemory out;
  out.world_size = world_size;
  out.base_whole = estimate.base_weights;
  std::vector<int64_t> projections;
  const std::string weight = ".weight";
  for (const TensorSpec& spec : hf_tensor_specs(config)) {
    if (spec.shape.size() != 2 || spec.name.rfind("model.layers.", 0) != 0) continue;
    const std::string module = spec.name.substr(0, spec.name.size() - weight.size());
    if (is_skipped_module(module, q.skip_modules)) continue;
    const int64_t bytes = quantized_bytes(spec.shape[0] * spec.shape[1], quant).total();
    projections.push_back(bytes);
    out.sharded_whole += bytes;
    out.shard += ceil_div(bytes + kAlignmentSlack, world_size);
  }
  std::sort(projections.begin(), projections.end(), std::greater<>());
  const int64_t held =
      std::min<int64_t>(1 + recipe.distributed.prefetch, static_cast<int64_t>(projections.size()));
  for (int64_t i = 0; i < held; ++i) out.gathered += projections[i] + kAlignmentSlack;
  out.base_per_rank = out.base_whole - out.sharded_whole + out.shard + out.gathered;
  out.total_per_rank = estimate.total - out.base_whole + out.base_per_rank;
  return out;
}

std::string describe_sharded_base_memory(const ShardedBaseMemory& m) {
  std::string out =
      "distributed.strategy shard over " + std::to_string(m.world_size) + " ranks (per rank):\n";
  out += "  decoder projections, quantized, whole   " + gib(m.sharded_whole) + "\n";
  out += "  this rank's shard                       " + gib(m.shard) + "\n";
  out += "  gathered at once (1 + prefetch)         " + gib(m.gathered) + "\n";
  out +=
      "  base weights per rank (ddp: " + gib(m.base_whole) + ")   " + gib(m.base_per_rank) + "\n";
  out += "  total per rank                          " + gib(m.total_per_rank) + "\n";
  return out;
}

}  // namespace qtrain

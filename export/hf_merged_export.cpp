#include "export/hf_merged_export.h"

#include "core/atomic_file.h"
#include "core/dtype.h"
#include "core/error.h"
#include "formats/safetensors/safetensors.h"
#include "models/model_files.h"

#include <ATen/ATen.h>

namespace qtrain {

void write_merged_hf(const MergedWeights& weights, const std::string& dir, at::ScalarType dtype,
                     uint64_t max_shard_bytes) {
  std::vector<StreamedTensor> specs;
  for (const std::string& name : weights.names()) {
    const at::ScalarType stored = weights.stored_dtype(name);
    specs.push_back({name, at::isFloatingType(stored) ? dtype : stored, weights.shape(name)});
  }
  ShardOptions shards;
  shards.max_shard_bytes = max_shard_bytes;
  write_checkpoint_streaming(
      dir, specs,
      [&](const StreamedTensor& spec) { return weights.tensor(spec.name).to(spec.dtype); }, shards);

  nlohmann::json config = weights.config_json();
  config["torch_dtype"] = scalar_type_name(dtype);
  if (config.contains("dtype")) config["dtype"] = scalar_type_name(dtype);
  write_file_atomically(dir + "/config.json", config.dump(2) + "\n");
  copy_model_side_files(weights.model_dir(), dir);
}

}  // namespace qtrain

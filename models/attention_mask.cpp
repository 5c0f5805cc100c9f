#include "models/attention_mask.h"

#include "core/error.h"

#include <ATen/ATen.h>

namespace qtrain {

at::Tensor build_attention_mask(int64_t batch, int64_t length, int64_t past,
                                const at::Tensor& segment_ids,
                                std::optional<int64_t> sliding_window, const at::Device& device) {
  const int64_t keys = past + length;
  const bool window_matters = sliding_window && *sliding_window < keys;
  if (!segment_ids.defined() && past == 0 && !window_matters) return {};

  auto long_options = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor query_index = at::arange(past, keys, long_options).view({length, 1});
  at::Tensor key_index = at::arange(0, keys, long_options).view({1, keys});
  at::Tensor mask = key_index <= query_index;  // [T, S]
  if (window_matters) mask = mask.logical_and(query_index - key_index < *sliding_window);
  mask = mask.view({1, 1, length, keys}).expand({batch, 1, length, keys});
  if (segment_ids.defined()) {
    if (past != 0) {
      throw_error(ErrorKind::kUnsupported, "segment ids cannot be combined with a KV cache");
    }
    at::Tensor seg = segment_ids.to(device);
    at::Tensor same = seg.view({batch, 1, length, 1}) == seg.view({batch, 1, 1, length});
    mask = mask.logical_and(same);
  }
  return mask.contiguous();
}

}  // namespace qtrain

#include "models/attention_mask.h"

#include "core/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>
#include <vector>

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

std::optional<PackedSegments> segments_from_ids(const at::Tensor& segment_ids) {
  const at::Tensor ids = segment_ids.to(at::kLong).contiguous();
  const int64_t rows = ids.size(0), length = ids.size(1);
  const int64_t* id = ids.data_ptr<int64_t>();
  std::vector<int32_t> bounds = {0};
  int64_t longest = 0, start = 0;
  for (int64_t t = 0; t < rows * length; ++t) {
    const int64_t column = t % length;
    if (column > 0 && id[t] < id[t - 1]) return std::nullopt;
    if (column > 0 && id[t] == id[t - 1]) continue;
    if (t > 0) bounds.push_back(static_cast<int32_t>(t));
    longest = std::max(longest, t - start);
    start = t;
  }
  if (rows * length > 0) bounds.push_back(static_cast<int32_t>(rows * length));
  longest = std::max(longest, rows * length - start);
  PackedSegments segments;
  segments.cu_seqlens_host = at::tensor(bounds, at::kInt);
  segments.max_seqlen = longest;
  return segments;
}

int64_t check_cu_seqlens(const at::Tensor& cu_seqlens_host, int64_t batch, int64_t length) {
  auto fail = [](const std::string& message) {
    throw_error(ErrorKind::kShape, message, {.tensor = "cu_seqlens"});
  };
  if (cu_seqlens_host.dim() != 1 || cu_seqlens_host.numel() < 2 ||
      !at::isIntegralType(cu_seqlens_host.scalar_type(), /*includeBool=*/false)) {
    fail("cu_seqlens must be a 1-d integer tensor of at least 2 entries");
  }
  const at::Tensor cu = cu_seqlens_host.to(at::kLong).contiguous();
  const int64_t* bound = cu.data_ptr<int64_t>();
  const int64_t count = cu.numel(), total = batch * length;
  if (bound[0] != 0 || bound[count - 1] != total) {
    fail("cu_seqlens must run from 0 to batch * length = " + std::to_string(total) + ", got " +
         std::to_string(bound[0]) + " to " + std::to_string(bound[count - 1]));
  }
  int64_t longest = 0, next_row_end = length;
  for (int64_t s = 1; s < count; ++s) {
    if (bound[s] < bound[s - 1]) fail("cu_seqlens must not decrease");
    if (bound[s] > next_row_end) {
      fail("cu_seqlens has no boundary at the end of row " + std::to_string(next_row_end / length));
    }
    if (bound[s] == next_row_end) next_row_end += length;
    longest = std::max(longest, bound[s] - bound[s - 1]);
  }
  return longest;
}

}  // namespace qtrain

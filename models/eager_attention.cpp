#include "models/eager_attention.h"

#include <ATen/ATen.h>

#include <limits>
#include <vector>

namespace qtrain {

at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& mask, double scale, std::optional<double> softcap) {
  const int64_t groups = q.size(1) / k.size(1);
  const at::Tensor keys = groups == 1 ? k : k.repeat_interleave(groups, 1);
  const at::Tensor values = groups == 1 ? v : v.repeat_interleave(groups, 1);
  at::Tensor scores = at::matmul(q, keys.transpose(2, 3)) * scale;  // [B, Hq, T, S]
  if (softcap) scores = at::tanh(scores / *softcap) * *softcap;
  const int64_t length = q.size(2), total = k.size(2);
  at::Tensor allowed = mask;
  if (!allowed.defined() && length > 1) {
    allowed = at::ones({length, total}, q.options().dtype(at::kBool)).tril(total - length);
  }
  if (allowed.defined()) {
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  }
  const at::Tensor weights = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(weights, values);
}

at::Tensor eager_packed_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const PackedSegments& segments,
                                  std::optional<int64_t> sliding_window, double scale,
                                  std::optional<double> softcap) {
  const at::Tensor bounds =
      (segments.cu_seqlens_host.defined() ? segments.cu_seqlens_host : segments.cu_seqlens.cpu())
          .to(at::kLong)
          .contiguous();
  const int64_t* cu = bounds.data_ptr<int64_t>();
  std::vector<at::Tensor> outputs;
  for (int64_t s = 0; s + 1 < bounds.numel(); ++s) {
    const int64_t start = cu[s], length = cu[s + 1] - start;
    if (length == 0) continue;
    // [L, H, D] -> [1, H, L, D]
    auto segment = [&](const at::Tensor& t) {
      return t.narrow(0, start, length).transpose(0, 1).unsqueeze(0);
    };
    const auto index_options = at::TensorOptions().dtype(at::kLong).device(q.device());
    const at::Tensor query_index = at::arange(length, index_options).view({length, 1});
    const at::Tensor key_index = at::arange(length, index_options).view({1, length});
    at::Tensor mask = key_index <= query_index;
    if (sliding_window) mask = mask.logical_and(query_index - key_index < *sliding_window);
    const at::Tensor out =
        eager_attention(segment(q), segment(k), segment(v), mask, scale, softcap);  // [1,H,L,D]
    outputs.push_back(out.squeeze(0).transpose(0, 1));
  }
  return at::cat(outputs, 0);
}

}  // namespace qtrain

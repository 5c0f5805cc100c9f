#include "models/varlen_attention.h"

#include "core/error.h"

#include <ATen/ATen.h>

#ifdef QTRAIN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <vector>

namespace qtrain {
namespace {

bool gpu_has_flash_attention(const at::Device& device) {
#ifdef QTRAIN_WITH_CUDA
  return at::cuda::getDeviceProperties(device.index())->major >= 8;  // Ampere or newer
#else
  return false;
#endif
}

// The flash kernel: grid sized by max_seqlen, cu_seqlens on q's device. Returns [N, Hq, D].
at::Tensor flash_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& cu_seqlens, int64_t max_seqlen,
                        std::optional<int64_t> sliding_window, double scale) {
  // HF's window admits keys with i - j < window; flash's left window admits i - j <= left.
  std::optional<int64_t> left, right;
  if (sliding_window) {
    left = *sliding_window - 1;
    right = 0;
  }
  auto outputs = at::_flash_attention_forward(q.contiguous(), k.contiguous(), v.contiguous(),
                                              cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                              /*dropout_p=*/0.0, /*is_causal=*/true,
                                              /*return_debug_mask=*/false, scale, left, right);
  return std::get<0>(outputs);
}

// One scaled_dot_product_attention per segment. Returns [N, Hq, D].
at::Tensor per_segment(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& cu_seqlens_host, std::optional<int64_t> sliding_window,
                       double scale) {
  const at::Tensor cu = cu_seqlens_host.to(at::kInt).contiguous();
  const int32_t* bounds = cu.data_ptr<int32_t>();
  const bool gqa = q.size(1) != k.size(1);
  std::vector<at::Tensor> outputs;
  outputs.reserve(cu.numel());
  for (int64_t s = 0; s + 1 < cu.numel(); ++s) {
    const int64_t start = bounds[s], length = bounds[s + 1] - bounds[s];
    if (length == 0) continue;
    // [L, heads, D] -> [1, heads, L, D]
    auto heads_first = [&](const at::Tensor& t) {
      return t.narrow(0, start, length).transpose(0, 1).unsqueeze(0);
    };
    std::optional<at::Tensor> mask;
    if (sliding_window && *sliding_window < length) {
      auto index = at::arange(length, at::TensorOptions().dtype(at::kLong).device(q.device()));
      at::Tensor distance = index.view({length, 1}) - index.view({1, length});  // i - j
      mask = distance.ge(0).logical_and(distance.lt(*sliding_window));
    }
    at::Tensor out = at::scaled_dot_product_attention(
        heads_first(q), heads_first(k), heads_first(v), mask, /*dropout_p=*/0.0,
        /*is_causal=*/!mask.has_value(), scale, /*enable_gqa=*/gqa);
    outputs.push_back(out.squeeze(0).transpose(0, 1));  // [L, Hq, D]
  }
  if (outputs.empty()) return at::empty_like(q);
  return at::cat(outputs, 0);
}

void check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const PackedSegments& segments) {
  const bool ok = q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes() &&
                  q.size(0) == k.size(0) && q.size(2) == k.size(2) && k.size(1) > 0 &&
                  q.size(1) % k.size(1) == 0;
  if (!ok) {
    throw_error(ErrorKind::kShape,
                "varlen attention takes q [N, Hq, D] and k, v [N, Hkv, D] with Hkv dividing Hq");
  }
  if (!segments.cu_seqlens.defined() && !segments.cu_seqlens_host.defined()) {
    throw_error(ErrorKind::kShape, "varlen attention needs cu_seqlens", {.tensor = "cu_seqlens"});
  }
}

}  // namespace

bool varlen_uses_flash_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const auto dtype = q.scalar_type();
  const int64_t head_dim = q.size(-1);
  return q.is_cuda() && (dtype == at::kBFloat16 || dtype == at::kHalf) &&
         k.scalar_type() == dtype && v.scalar_type() == dtype && head_dim % 8 == 0 &&
         head_dim <= 256 && gpu_has_flash_attention(q.device());
}

at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const PackedSegments& segments, std::optional<int64_t> sliding_window,
                            double scale) {
  check_shapes(q, k, v, segments);
  if (varlen_uses_flash_kernel(q, k, v)) {
    at::Tensor cu = segments.cu_seqlens.defined() ? segments.cu_seqlens : segments.cu_seqlens_host;
    cu = cu.to(q.device(), at::kInt, /*non_blocking=*/true);
    int64_t max_seqlen = segments.max_seqlen;
    if (max_seqlen <= 0) {
      at::Tensor host = segments.cu_seqlens_host.defined() ? segments.cu_seqlens_host : cu.cpu();
      max_seqlen = host.numel() > 1 ? host.diff().max().item<int64_t>() : 0;
    }
    return flash_varlen(q, k, v, cu, max_seqlen, sliding_window, scale);
  }
  const at::Tensor host =
      segments.cu_seqlens_host.defined() ? segments.cu_seqlens_host : segments.cu_seqlens.cpu();
  return per_segment(q, k, v, host, sliding_window, scale);
}

}  // namespace qtrain

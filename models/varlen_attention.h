// Causal attention over packed tokens: the rows of a batch flattened into one stream of N tokens,
// cut into segments (samples, padding tails) that attend only within themselves. No [T, T] mask
// is ever built.
//
// On CUDA (bf16/fp16, head_dim a multiple of 8 up to 256, sm_80 or newer) this is ATen's
// variable-length flash attention, GQA and the sliding window inside the kernel, differentiable
// through autograd (FlashAttentionBackward0). Anywhere else each segment runs through
// scaled_dot_product_attention on its own: the reference the tests compare against.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace qtrain {

// Segment s holds tokens [cu_seqlens[s], cu_seqlens[s + 1]) of the flattened stream.
struct PackedSegments {
  at::Tensor cu_seqlens;       // int32 [S + 1], on the device of the tokens (the kernel reads it)
  at::Tensor cu_seqlens_host;  // the same numbers on the CPU (the per-segment path loops over them)
  int64_t max_seqlen = 0;      // the longest segment
};

// q [N, Hq, D], k/v [N, Hkv, D] (Hkv divides Hq: GQA) -> [N, Hq, D]. Query i of a segment attends
// keys j <= i of its segment, and with `sliding_window` only those with i - j < window (HF's
// convention). `scale` multiplies q.k. Either cu_seqlens may be undefined when the other is
// given: the missing one is copied from the other (a device-to-host copy waits for the device).
at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const PackedSegments& segments, std::optional<int64_t> sliding_window,
                            double scale);

// True when varlen_attention runs these tensors through the flash kernel.
bool varlen_uses_flash_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

}  // namespace qtrain

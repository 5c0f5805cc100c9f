// Attention written out as transformers' eager path computes it: scores = q k^T * scale, optionally
// soft-capped to c * tanh(scores / c) (Gemma 2's attn_logit_softcapping, which no fused SDPA or
// flash kernel applies), masked, softmax in float32, times v. Used for models with a soft cap.
#pragma once

#include "models/varlen_attention.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace qtrain {

// q [B, Hq, T, D], k/v [B, Hkv, S, D] (Hkv divides Hq: GQA, head h reads kv head h / (Hq / Hkv)),
// mask bool [B or 1, 1, T, S] (true: attend) or undefined: causal when T > 1 (then S == T), every
// key otherwise -> [B, Hq, T, D] in q's dtype.
at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& mask, double scale, std::optional<double> softcap);

// The packed form (varlen_attention's contract): q [N, Hq, D], k/v [N, Hkv, D] -> [N, Hq, D];
// each segment attends causally within itself (and within `sliding_window` when given).
at::Tensor eager_packed_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const PackedSegments& segments,
                                  std::optional<int64_t> sliding_window, double scale,
                                  std::optional<double> softcap);

}  // namespace qtrain

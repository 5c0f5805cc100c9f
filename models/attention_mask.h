// Which keys each query may attend to: causal order, packed-sample boundaries and an optional
// sliding window, as one boolean mask (true = attend).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace qtrain {

// Query i of a row sits at absolute index past + i; key j at index j (0 <= j < past + T).
// segment_ids [B, T] (optional, only without past): tokens attend only within their own segment,
// so samples packed into one row never see each other.
// Returns [B, 1, T, past + T] bool, or an undefined tensor when plain causal attention over a
// fresh sequence suffices (the caller can then use the fused causal path).
at::Tensor build_attention_mask(int64_t batch, int64_t length, int64_t past,
                                const at::Tensor& segment_ids,
                                std::optional<int64_t> sliding_window, const at::Device& device);

}  // namespace qtrain

// Which keys each query may attend to: causal order, packed-sample boundaries and an optional
// sliding window, either as one boolean mask (true = attend) or, for packed rows, as the
// segments of the flattened token stream (models/varlen_attention.h).
#pragma once

#include "models/varlen_attention.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace qtrain {

// How the tokens of one forward pass attend. Three layouts:
//  - packed defined: variable-length attention over the flattened [B*T] tokens;
//  - mask defined: dense attention under the mask [B, 1, T, past + T] bool;
//  - neither: plain causal attention over a fresh sequence (the fused causal path).
// The sliding window is the model's; the mask already holds it, the packed layout does not.
struct AttentionLayout {
  at::Tensor mask;
  PackedSegments packed;
  bool varlen() const { return packed.cu_seqlens.defined(); }
};

// Query i of a row sits at absolute index past + i; key j at index j (0 <= j < past + T).
// segment_ids [B, T] (optional, only without past): tokens attend only within their own segment,
// so samples packed into one row never see each other.
// Returns [B, 1, T, past + T] bool, or an undefined tensor when plain causal attention over a
// fresh sequence suffices (the caller can then use the fused causal path).
at::Tensor build_attention_mask(int64_t batch, int64_t length, int64_t past,
                                const at::Tensor& segment_ids,
                                std::optional<int64_t> sliding_window, const at::Device& device);

// segment_ids [B, T] on the CPU -> the segments of the flattened stream: a new one wherever the
// id changes and at every row start (PackedSegments with only cu_seqlens_host and max_seqlen).
// std::nullopt when some row's ids decrease, since a segment could then come back after another
// one, which only a mask can express.
std::optional<PackedSegments> segments_from_ids(const at::Tensor& segment_ids);

// Checks cu_seqlens (any integer dtype, [S + 1]) against a batch of [batch, length] tokens: it
// starts at 0, never decreases, ends at batch * length and has a boundary at every row end.
// Returns the longest segment. Throws Error(kShape) naming "cu_seqlens".
int64_t check_cu_seqlens(const at::Tensor& cu_seqlens_host, int64_t batch, int64_t length);

}  // namespace qtrain

#include "export/gptq_fit.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

namespace qtrain {
namespace {

constexpr float kMaxCode = 15.0f;
constexpr float kMaxHalf = 65504.0f;
// Groups per chunk of the candidate search: chunk * candidates * group values stay near 1M.
constexpr int64_t kSearchValues = int64_t{1} << 20;

// Nearest fp16 value, floored at kGptqMinScale (and capped at fp16's largest finite value).
at::Tensor fp16_scale(const at::Tensor& s) {
  return s.clamp(0.0, kMaxHalf).to(at::kHalf).to(at::kFloat).clamp_min(kGptqMinScale);
}

// Candidate scales [N, C] for groups of targets t [N, g] whose rounded-zero scale is s [N].
at::Tensor candidate_scales(const at::Tensor& t, const at::Tensor& s) {
  const at::Tensor above = std::get<0>(t.max(-1)).clamp_min(0.0);  // [N]
  const at::Tensor below = std::get<0>(t.min(-1)).neg().clamp_min(0.0);
  // With integer zero z' the 16 codes cover [-z' s', (15 - z') s']: the least s' for each z'.
  const at::Tensor z = at::arange(1, 16, t.options());  // [15]
  const at::Tensor needed =
      at::maximum(above.unsqueeze(-1) / (kMaxCode - z), below.unsqueeze(-1) / z);     // [N, 15]
  const at::Tensor tight = std::get<0>(needed.min(-1));                               // [N]
  const at::Tensor around_tight = 1.0 + at::arange(-2, 13, 2, t.options()) / 24.0;    // 8
  const at::Tensor around_trained = 1.0 + at::arange(-8, 9, 2, t.options()) / 128.0;  // 9
  return fp16_scale(at::cat({s.unsqueeze(-1) * around_trained, tight.unsqueeze(-1) * around_tight},
                            /*dim=*/-1));
}

// The order in which codes move one step in direction `dir` (+1 up, -1 down; [..., 1]): by the
// squared error the move adds, in 1/16 of a step, then by how far the value lies below (above)
// the tie-break target; codes that cannot move last. e, e2, q [..., g]; s [..., 1].
at::Tensor move_key(const at::Tensor& e, const at::Tensor& e2, const at::Tensor& q,
                    const at::Tensor& s, const at::Tensor& dir) {
  const at::Tensor added = (e * dir / s * 16).floor();
  const at::Tensor toward = (e2 * dir / s).clamp(-1, 1);
  const at::Tensor blocked = at::where(dir > 0, q >= kMaxCode, q <= 0);
  return at::where(blocked, std::numeric_limits<float>::infinity(), added * 4 + toward);
}

// cost = sum e^2 + (sum e)^2 over the last dim.
at::Tensor fit_cost(const at::Tensor& e) {
  return e.square().sum(-1) + e.sum(-1).square();
}

}  // namespace

GptqFit gptq_round_zeros(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros,
                         const at::Tensor& delta, GptqFitStats* stats) {
  const at::Tensor rounded = (zeros - delta / scales).round();
  if (stats) {
    stats->clamped_rounded += (rounded.lt(1) | rounded.gt(16)).sum().item<int64_t>();
    stats->dropped_rounded += (rounded == zeros).sum().item<int64_t>();
  }
  GptqFit fit;
  fit.codes = codes;
  fit.zeros = rounded.clamp(1, 16);
  fit.scales = fp16_scale(scales);
  return fit;
}

GptqFit fit_gptq_groups(const at::Tensor& merged, const at::Tensor& tie_break, int64_t group_size,
                        const GptqFit& rounded, GptqFitStats* stats) {
  const int64_t out = merged.size(0), in = merged.size(1), groups = in / group_size;
  const int64_t n = out * groups;
  const at::Tensor t = merged.to(at::kFloat).reshape({n, group_size});
  const at::Tensor t2 = tie_break.defined() ? tie_break.to(at::kFloat).reshape({n, group_size}) : t;
  const at::Tensor q0 = rounded.codes.reshape({n, group_size});
  const at::Tensor z0 = rounded.zeros.reshape({n});
  const at::Tensor s0 = rounded.scales.reshape({n});
  const at::Tensor candidates = candidate_scales(t, s0);  // [N, C]
  const int64_t c = candidates.size(1);

  at::Tensor codes = q0.clone();
  at::Tensor zeros = z0.clone();
  at::Tensor scales = s0.clone();
  at::Tensor chose_fit = at::zeros({n}, t.options().dtype(at::kBool));
  const int64_t chunk = std::max<int64_t>(1, kSearchValues / (c * group_size));
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t len = std::min(chunk, n - begin);
    const at::Tensor tc = t.narrow(0, begin, len).unsqueeze(1);            // [len, 1, g]
    const at::Tensor t2c = t2.narrow(0, begin, len).unsqueeze(1);          // [len, 1, g]
    const at::Tensor sc = candidates.narrow(0, begin, len).unsqueeze(-1);  // [len, C, 1]
    const at::Tensor r = (tc / sc).round();                                // [len, C, g]
    const at::Tensor lo = std::get<0>(r.min(-1)).neg().clamp_min(1);       // [len, C]
    const at::Tensor hi = (kMaxCode - std::get<0>(r.max(-1))).clamp_max(16);
    // A zero that keeps every code in range when one exists (the one nearest the rounded zero),
    // else the middle of the codes, clamped.
    const at::Tensor preferred = z0.narrow(0, begin, len).unsqueeze(-1);
    const at::Tensor z = at::where(lo <= hi, at::minimum(at::maximum(preferred, lo), hi),
                                   ((lo + hi) / 2).floor().clamp(1, 16))
                             .unsqueeze(-1);    // [len, C, 1]
    at::Tensor q = (r + z).clamp(0, kMaxCode);  // [len, C, g]
    // Bring the group's sum back: k codes one step up (k > 0) or down.
    const at::Tensor e = sc * (q - z) - tc;
    const at::Tensor e2 = sc * (q - z) - t2c;
    const at::Tensor k = (e.sum(-1, /*keepdim=*/true).neg() / sc).round();  // [len, C, 1]
    const at::Tensor dir = at::where(k < 0, -1.0f, 1.0f);
    const at::Tensor order = move_key(e, e2, q, sc, dir).argsort(/*stable=*/true, -1);
    const at::Tensor moved = at::zeros_like(q).scatter_(
        -1, order, (at::arange(group_size, q.options()) < k.abs()).to(q.scalar_type()));
    q = (q + dir * moved).clamp(0, kMaxCode);
    const at::Tensor cost = fit_cost(sc * (q - z) - tc);  // [len, C]
    const auto [best_cost, best] = cost.min(-1);          // [len]
    const at::Tensor rounded_cost =
        fit_cost(s0.narrow(0, begin, len).unsqueeze(-1) * (q0.narrow(0, begin, len).to(at::kFloat) -
                                                           z0.narrow(0, begin, len).unsqueeze(-1)) -
                 t.narrow(0, begin, len));
    const at::Tensor better = best_cost < rounded_cost;
    const at::Tensor pick = best.unsqueeze(-1);  // [len, 1]
    const at::Tensor best_q =
        q.gather(1, pick.unsqueeze(-1).expand({len, 1, group_size})).squeeze(1);
    codes.narrow(0, begin, len)
        .copy_(at::where(better.unsqueeze(-1), best_q.to(at::kByte), q0.narrow(0, begin, len)));
    zeros.narrow(0, begin, len)
        .copy_(
            at::where(better, z.squeeze(-1).gather(1, pick).squeeze(1), z0.narrow(0, begin, len)));
    scales.narrow(0, begin, len)
        .copy_(at::where(better, candidates.narrow(0, begin, len).gather(1, pick).squeeze(1),
                         s0.narrow(0, begin, len)));
    chose_fit.narrow(0, begin, len).copy_(better);
  }

  GptqFit fit;
  fit.codes = codes.reshape({out, in});
  fit.zeros = zeros.reshape({out, groups});
  fit.scales = scales.reshape({out, groups});
  if (stats) {
    const at::Tensor err_rounded = gptq_fit_dequantize(rounded, group_size) - merged;
    const at::Tensor err_fitted = gptq_fit_dequantize(fit, group_size) - merged;
    const at::Tensor below = std::get<0>(candidates.min(-1)) <= kGptqMinScale;
    stats->groups += n;
    stats->weights += merged.numel();
    stats->refit_groups += chose_fit.sum().item<int64_t>();
    stats->floored_scales += (below & (scales == kGptqMinScale)).sum().item<int64_t>();
    stats->sse_rounded += err_rounded.square().sum().item<double>();
    stats->sse_fitted += err_fitted.square().sum().item<double>();
    stats->mean_sse_rounded +=
        err_rounded.view({n, group_size}).mean(-1).square().sum().item<double>();
    stats->mean_sse_fitted +=
        err_fitted.view({n, group_size}).mean(-1).square().sum().item<double>();
    stats->max_error_rounded =
        std::max(stats->max_error_rounded, err_rounded.abs().max().item<double>());
    stats->max_error_fitted =
        std::max(stats->max_error_fitted, err_fitted.abs().max().item<double>());
  }
  return fit;
}

at::Tensor gptq_fit_dequantize(const GptqFit& fit, int64_t group_size) {
  const at::Tensor scales = fit.scales.repeat_interleave(group_size, 1);
  const at::Tensor zeros = fit.zeros.repeat_interleave(group_size, 1);
  return scales * (fit.codes.to(at::kFloat) - zeros);
}

}  // namespace qtrain

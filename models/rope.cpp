#include "models/rope.h"

#include <ATen/ATen.h>

#include <cmath>

namespace qtrain {

at::Tensor rope_inverse_frequencies(int64_t head_dim, double theta, const RopeScaling& scaling) {
  at::Tensor exponent = at::arange(0, head_dim, 2, at::kLong).to(at::kFloat) / head_dim;
  at::Tensor inv_freq = 1.0 / at::pow(theta, exponent);
  switch (scaling.type) {
    case RopeType::kDefault:
      return inv_freq;
    case RopeType::kLinear:
      return inv_freq / scaling.factor;
    case RopeType::kLlama3:
      break;
  }
  // Llama 3: long wavelengths are divided by `factor`, short ones kept, the band between
  // interpolated smoothly.
  const double original = static_cast<double>(scaling.original_max_position_embeddings);
  const double low_freq_wavelen = original / scaling.low_freq_factor;
  const double high_freq_wavelen = original / scaling.high_freq_factor;
  at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq);
  at::Tensor smooth = (original / wavelen - scaling.low_freq_factor) /
                      (scaling.high_freq_factor - scaling.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled;
  at::Tensor medium = at::logical_not(wavelen < high_freq_wavelen)
                          .logical_and(at::logical_not(wavelen > low_freq_wavelen));
  return at::where(medium, smoothed, scaled);
}

RopeFrequencies::RopeFrequencies(at::Tensor inv_freq_cpu) {
  copies_.push_back(std::move(inv_freq_cpu));
}

at::Tensor RopeFrequencies::on(const at::Device& device) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const at::Tensor& copy : copies_) {
    if (copy.device() == device) return copy;
  }
  copies_.push_back(copies_.front().to(device));
  return copies_.back();
}

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq,
                                               const at::Tensor& position_ids,
                                               at::ScalarType dtype) {
  at::Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) *
                     inv_freq.to(position_ids.device()).view({1, 1, -1});
  at::Tensor angles = at::cat({freqs, freqs}, -1);
  return {angles.cos().to(dtype), angles.sin().to(dtype)};
}

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                      int64_t head_axis) {
  return x * cos.unsqueeze(head_axis) + rotate_half(x) * sin.unsqueeze(head_axis);
}

}  // namespace qtrain

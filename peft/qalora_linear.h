// QA-LoRA (Xu et al. 2023, "QA-LoRA: Quantization-Aware Low-Rank Adaptation") around a frozen
// group-wise INT4 base (Int4LinearSlot, group size g):
//
//   y = base(x) + scaling * B(A(dropout(pool(x))))     A [r, in/g], B [out, r]
//   pool(x)[..., G] = mean(x[..., G*g : (G+1)*g])     (the paper's AvgPool1d(g))
//
// Because A only sees group means, the adapter equals a dense weight delta that is constant on
// each (output row, input group): D[n, G] = scaling * (B @ A)[n, G] / g, since
// sum_G (B A)[n, G] * mean_{i in G} x_i = sum_i x_i * (B A)[n, G(i)] / g. Such a delta folds into
// the zero point exactly: s (q - z) + D = s (q - (z - D / s)), so merge() rewrites the zeros to
// z' = z - D / s (fractional) and leaves the INT4 codes and the scales untouched; the merged model
// is still INT4 codes plus a float scale and zero per group.
//
// Conventions, where implementations differ (formats.md §8):
// * pooling is the mean, as in the paper's repository (yuhuixu1993/qa-lora). PEFT's built-in
//   `use_qalora` multiplies the mean by the number of groups (in / g); a PEFT QA-LoRA adapter
//   therefore corresponds to ours with lora_A multiplied by in / g.
// * dropout acts on the pooled input (after the pooling), as in the paper's code.
// * initialisation follows qtrain's LoRA (LoraConfig::init), with fan-in in/g: "kaiming" draws
//   A ~ U(-1/sqrt(in/g), 1/sqrt(in/g)) (the paper's repository uses xavier_uniform), "gaussian"
//   N(0, 1/r); B starts at zero.
#pragma once

#include "models/int4_linear_slot.h"
#include "peft/adapter_slot.h"
#include "peft/lora_config.h"

#include <ATen/core/Generator.h>

namespace qtrain {

class QaLoraLinear : public AdapterSlot {
 public:
  // Wraps `base` (frozen). `group_size` is the pooling group and must equal the base's
  // quantization group size, else Error(kConfig): only then is the delta constant per quantization
  // group. A is drawn on the CPU from `generator` (a CPU generator) and created with B in
  // config.dtype on the base's device. The module starts in the base's training mode.
  QaLoraLinear(std::shared_ptr<Int4LinearSlot> base, const LoraConfig& config, int64_t group_size,
               at::Generator generator);

  // x [..., in] -> [..., out] in the base output's dtype. The adapter path runs in A's dtype;
  // dropout (at::dropout: global generator, replays under RNG-state restore) only in training
  // mode. A merged adapter adds nothing: the base already contains it.
  at::Tensor forward(const at::Tensor& x) override;
  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }

  std::shared_ptr<LinearSlot> base() const override { return base_; }
  // {"lora_A.weight" [r, in/g], "lora_B.weight" [out, r]}, PEFT's names.
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors() const override;
  // Throws Error(kShape) for an unknown name or shape, Error(kInternal) while merged.
  void load_adapter_tensor(const std::string& name, const at::Tensor& value) override;

  // merge: zeros <- zeros - zero_shift(), keeping a copy of the original zeros (float32
  // [out, in/g], 1/8 of the codes' bytes at g = 32) so that unmerge restores them bit for bit
  // rather than adding the shift back with rounding. Merging twice or unmerging an unmerged
  // adapter is a caller bug: Error(kInternal). Do not merge while a backward pass is pending.
  void merge() override;
  void unmerge() override;
  bool merged() const override { return merged_; }

  // D / s = scaling * (B @ A) / g / scales: float32 [out, in/g] (float64 for a float64 adapter)
  // on the base's device.
  at::Tensor zero_shift() const;
  // The adapter as a dense weight delta [out, in]: D[n, G(i)] (float32, or float64 for a float64
  // adapter).
  at::Tensor delta_weight() const;

  const at::Tensor& lora_A() const { return lora_A_; }  // [r, in/g]
  const at::Tensor& lora_B() const { return lora_B_; }  // [out, r]
  int64_t rank() const { return lora_A_.size(0); }
  int64_t group_size() const { return group_size_; }
  double scaling() const { return scaling_; }
  double dropout() const { return dropout_; }

 private:
  at::Tensor group_delta() const;  // D [out, in/g]

  std::shared_ptr<Int4LinearSlot> base_;
  at::Tensor lora_A_;
  at::Tensor lora_B_;
  int64_t group_size_;
  double scaling_;
  double dropout_;
  bool merged_ = false;
  at::Tensor unmerged_zeros_;  // the base's zeros before merge(); undefined when not merged
};

}  // namespace qtrain

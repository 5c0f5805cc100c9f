// Variable-length attention over packed tokens equals every segment attended alone: the kernel
// against plain per-sample attention (GQA, a sliding window, 1-token segments, gradients), and a
// model on a packed batch against each sample run alone, the dense-mask path and gradient
// checkpointing. The CUDA cases (flash kernel against the per-segment path, math SDPA backend
// off) skip without a GPU.
#include "core/error.h"
#include "models/attention_mask.h"
#include "models/llama.h"
#include "models/varlen_attention.h"
#include "tests/models/random_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace qtrain {
namespace {

using testing::max_abs_diff;

#define REQUIRE_CUDA()                                               \
  do {                                                               \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU"; \
  } while (0)

const std::vector<int64_t> kLengths = {5, 1, 7, 1, 3, 9};  // 26 tokens, two 1-token segments

PackedSegments segments_of(const std::vector<int64_t>& lengths) {
  std::vector<int32_t> bounds = {0};
  for (int64_t length : lengths) bounds.push_back(bounds.back() + static_cast<int32_t>(length));
  PackedSegments segments;
  segments.cu_seqlens_host = at::tensor(bounds, at::kInt);
  segments.cu_seqlens = segments.cu_seqlens_host;
  segments.max_seqlen = *std::max_element(lengths.begin(), lengths.end());
  return segments;
}

// One sample attended on its own, written out: k/v repeated for every query head of their group,
// then plain causal SDPA, or explicit softmax(q k^T) v under a window mask when the window is
// shorter than the sample. q [L, Hq, D], k/v [L, Hkv, D] -> [L, Hq, D].
at::Tensor attend_alone(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        std::optional<int64_t> window, double scale) {
  const int64_t length = q.size(0), group = q.size(1) / k.size(1);
  const at::Tensor qh = q.transpose(0, 1);                              // [Hq, L, D]
  const at::Tensor kh = k.repeat_interleave(group, 1).transpose(0, 1);  // [Hq, L, D]
  const at::Tensor vh = v.repeat_interleave(group, 1).transpose(0, 1);  // [Hq, L, D]
  if (!window || *window >= length) {
    return at::scaled_dot_product_attention(qh, kh, vh, {}, 0.0, /*is_causal=*/true, scale)
        .transpose(0, 1);
  }
  const at::Tensor i = at::arange(length).view({length, 1}),
                   j = at::arange(length).view({1, length});
  const at::Tensor allowed = (j <= i).logical_and(i - j < *window);
  const at::Tensor scores =
      (at::matmul(qh, kh.transpose(1, 2)) * scale).masked_fill(allowed.logical_not(), -INFINITY);
  return at::matmul(scores.softmax(-1), vh).transpose(0, 1);
}

at::Tensor attend_each_alone(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const std::vector<int64_t>& lengths, std::optional<int64_t> window,
                             double scale) {
  std::vector<at::Tensor> outputs;
  int64_t start = 0;
  for (int64_t length : lengths) {
    outputs.push_back(attend_alone(q.narrow(0, start, length), k.narrow(0, start, length),
                                   v.narrow(0, start, length), window, scale));
    start += length;
  }
  return at::cat(outputs, 0);
}

struct WithGrads {
  at::Tensor out, dq, dk, dv;
};

// Runs `attend` on leaf copies of q, k, v and back-propagates sum(out * upstream).
WithGrads run_with_grads(const std::function<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&)>& attend,
                         const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& upstream) {
  at::Tensor lq = q.detach().clone().requires_grad_(true);
  at::Tensor lk = k.detach().clone().requires_grad_(true);
  at::Tensor lv = v.detach().clone().requires_grad_(true);
  at::Tensor out = attend(lq, lk, lv);
  (out * upstream.to(out.device(), out.scalar_type())).sum().backward();
  return {out.detach(), lq.grad(), lk.grad(), lv.grad()};
}

struct Qkv {
  at::Tensor q, k, v, upstream;
};

Qkv random_qkv(int64_t tokens, int64_t head_dim, uint64_t seed) {
  at::manual_seed(seed);
  return {at::randn({tokens, 4, head_dim}), at::randn({tokens, 2, head_dim}),
          at::randn({tokens, 2, head_dim}), at::randn({tokens, 4, head_dim})};
}

TEST(VarlenAttention, EqualsEachSegmentAttendedAloneWithGradients) {
  const Qkv x = random_qkv(26, 8, 1);
  const double scale = 1.0 / std::sqrt(8.0);
  for (std::optional<int64_t> window : {std::optional<int64_t>(), std::optional<int64_t>(3)}) {
    const WithGrads varlen = run_with_grads(
        [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
          return varlen_attention(q, k, v, segments_of(kLengths), window, scale);
        },
        x.q, x.k, x.v, x.upstream);
    const WithGrads alone = run_with_grads(
        [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
          return attend_each_alone(q, k, v, kLengths, window, scale);
        },
        x.q, x.k, x.v, x.upstream);
    const std::string label = window ? "window 3" : "no window";
    ASSERT_EQ(varlen.out.sizes(), x.q.sizes());
    EXPECT_LT(max_abs_diff(varlen.out, alone.out), 1e-5) << label;
    EXPECT_LT(max_abs_diff(varlen.dq, alone.dq), 1e-5) << label;
    EXPECT_LT(max_abs_diff(varlen.dk, alone.dk), 1e-5) << label;
    EXPECT_LT(max_abs_diff(varlen.dv, alone.dv), 1e-5) << label;
  }
}

TEST(VarlenAttention, WindowChangesOnlySegmentsLongerThanIt) {
  const Qkv x = random_qkv(26, 8, 2);
  at::Tensor wide = varlen_attention(x.q, x.k, x.v, segments_of(kLengths), std::nullopt, 0.3);
  at::Tensor narrow = varlen_attention(x.q, x.k, x.v, segments_of(kLengths), 3, 0.3);
  // Segment 4 (3 tokens) starts at 14, segment 5 (9 tokens) at 17.
  EXPECT_EQ(max_abs_diff(wide.narrow(0, 14, 3), narrow.narrow(0, 14, 3)), 0.0);
  EXPECT_GT(max_abs_diff(wide.narrow(0, 17, 9), narrow.narrow(0, 17, 9)), 1e-3);
  // The first 3 tokens of a long segment see no more than the window anyway.
  EXPECT_EQ(max_abs_diff(wide.narrow(0, 17, 3), narrow.narrow(0, 17, 3)), 0.0);
}

TEST(VarlenAttention, EitherCopyOfCuSeqlensSuffices) {
  const Qkv x = random_qkv(26, 8, 3);
  const PackedSegments both = segments_of(kLengths);
  PackedSegments device_only, host_only;
  device_only.cu_seqlens = both.cu_seqlens;  // max_seqlen left 0: computed
  host_only.cu_seqlens_host = both.cu_seqlens_host;
  at::Tensor expected = varlen_attention(x.q, x.k, x.v, both, std::nullopt, 0.3);
  EXPECT_TRUE(at::equal(varlen_attention(x.q, x.k, x.v, device_only, std::nullopt, 0.3), expected));
  EXPECT_TRUE(at::equal(varlen_attention(x.q, x.k, x.v, host_only, std::nullopt, 0.3), expected));
  EXPECT_THROW(varlen_attention(x.q, x.k, x.v, PackedSegments{}, std::nullopt, 0.3), Error);
  EXPECT_THROW(varlen_attention(x.q, x.k.narrow(1, 0, 1).repeat({1, 3, 1}),
                                x.v.narrow(1, 0, 1).repeat({1, 3, 1}), both, std::nullopt, 0.3),
               Error);  // 3 kv heads do not divide 4
}

TEST(AttentionLayout, SegmentsFromIdsCutAtChangesAndRowStarts) {
  at::Tensor ids = at::tensor({0, 0, 1, 1, 1, 2, 0, 0, 0, 0, 1, 1}, at::kLong).view({2, 6});
  auto segments = segments_from_ids(ids);
  ASSERT_TRUE(segments.has_value());
  const at::Tensor expected = at::tensor({0, 2, 5, 6, 10, 12}, at::kInt);
  EXPECT_TRUE(at::equal(segments->cu_seqlens_host, expected)) << segments->cu_seqlens_host;
  EXPECT_EQ(segments->max_seqlen, 4);
  // Rows that each hold one segment of the same id are still cut at the row start.
  auto uniform = segments_from_ids(at::zeros({3, 4}, at::kLong));
  ASSERT_TRUE(uniform.has_value());
  EXPECT_TRUE(at::equal(uniform->cu_seqlens_host, at::tensor({0, 4, 8, 12}, at::kInt)));
  // An id that goes down could come back (0, 1, 0): only the mask path can say that.
  EXPECT_FALSE(segments_from_ids(at::tensor({0, 1, 0}, at::kLong).view({1, 3})).has_value());
}

TEST(AttentionLayout, CheckCuSeqlensRefusesBadBoundaries) {
  EXPECT_EQ(check_cu_seqlens(at::tensor({0, 1, 4, 8}, at::kInt), 2, 4), 4);
  EXPECT_EQ(check_cu_seqlens(at::tensor({0, 4, 4, 8}, at::kLong), 2, 4), 4);
  for (const std::vector<int64_t>& bad :
       std::vector<std::vector<int64_t>>{{0, 8},        // crosses the end of row 0
                                         {0, 3, 8},     // likewise
                                         {0, 4, 7},     // does not reach batch * length
                                         {1, 4, 8},     // does not start at 0
                                         {0, 4, 3, 8},  // decreases
                                         {0}}) {        // too short
    try {
      check_cu_seqlens(at::tensor(bad, at::kLong), 2, 4);
      ADD_FAILURE() << "accepted " << at::tensor(bad, at::kLong);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kShape);
      EXPECT_NE(std::string(e.what()).find("cu_seqlens"), std::string::npos) << e.what();
    }
  }
}

// Two packed rows of 12: samples of 5, 1 and 4 tokens and a 2-token padding tail; 7 and 5.
struct PackedRows {
  at::Tensor input_ids, position_ids, segment_ids, cu_seqlens;
  int64_t max_seqlen = 0;
  struct Sample {
    int64_t row, offset, length;
  };
  std::vector<Sample> samples;
};

PackedRows packed_rows() {
  const std::vector<std::vector<int64_t>> rows = {{5, 1, 4}, {7, 5}};
  const int64_t width = 12;
  PackedRows p;
  at::manual_seed(7);
  p.input_ids = at::randint(3, 97, {2, width}, at::kLong);
  p.position_ids = at::zeros({2, width}, at::kLong);
  p.segment_ids = at::zeros({2, width}, at::kLong);
  std::vector<int32_t> bounds = {0};
  for (int64_t r = 0; r < 2; ++r) {
    int64_t offset = 0, segment = 0;
    auto add_segment = [&](int64_t length) {
      p.position_ids[r].narrow(0, offset, length).copy_(at::arange(length, at::kLong));
      p.segment_ids[r].narrow(0, offset, length).fill_(segment++);
      offset += length;
      bounds.push_back(static_cast<int32_t>(r * width + offset));
      p.max_seqlen = std::max(p.max_seqlen, length);
    };
    for (int64_t length : rows[r]) {
      p.samples.push_back({r, offset, length});
      add_segment(length);
    }
    if (offset < width) {
      p.input_ids[r].narrow(0, offset, width - offset).fill_(0);  // padding
      add_segment(width - offset);
    }
  }
  p.cu_seqlens = at::tensor(bounds, at::kInt);
  return p;
}

ForwardInputs varlen_inputs(const PackedRows& p) {
  return {.input_ids = p.input_ids,
          .position_ids = p.position_ids,
          .cu_seqlens = p.cu_seqlens,
          .max_seqlen = p.max_seqlen};
}

// The same segments, numbered downwards along each row: equal ids mean the same as before, but
// ids that decrease keep the model on the dense-mask path.
ForwardInputs mask_inputs(const PackedRows& p) {
  return {
      .input_ids = p.input_ids, .position_ids = p.position_ids, .segment_ids = 100 - p.segment_ids};
}

ModelConfig config_of(const std::string& type) {
  ModelConfig config = testing::small_config(type);
  if (type == "mistral") config.sliding_window = 3;  // shorter than the samples of 4, 5 and 7
  return config;
}

const std::vector<std::string> kTypes = {"llama", "qwen3", "mistral"};

TEST(PackedModel, RoutesEachInputToItsAttentionLayout) {
  auto model = testing::random_model(config_of("llama"), 1);
  const PackedRows p = packed_rows();
  EXPECT_TRUE(model->attention_layout(varlen_inputs(p), 2, 12, 0).varlen());
  const AttentionLayout derived =
      model->attention_layout({.input_ids = p.input_ids, .segment_ids = p.segment_ids}, 2, 12, 0);
  ASSERT_TRUE(derived.varlen());
  EXPECT_TRUE(at::equal(derived.packed.cu_seqlens_host, p.cu_seqlens));
  EXPECT_EQ(derived.packed.max_seqlen, p.max_seqlen);
  const AttentionLayout masked = model->attention_layout(mask_inputs(p), 2, 12, 0);
  EXPECT_FALSE(masked.varlen());
  EXPECT_EQ(masked.mask.sizes(), (at::IntArrayRef{2, 1, 12, 12}));
  EXPECT_FALSE(model->attention_layout({.input_ids = p.input_ids}, 2, 12, 0).varlen());
}

TEST(PackedModel, VarlenLogitsEqualSamplesAloneAndTheMaskPath) {
  for (const std::string& type : kTypes) {
    auto model = testing::random_model(config_of(type), 3);
    const PackedRows p = packed_rows();
    torch::NoGradGuard no_grad;
    const at::Tensor varlen = model->forward(varlen_inputs(p));  // [2, 12, V]
    for (const auto& s : p.samples) {
      const at::Tensor ids = p.input_ids[s.row].narrow(0, s.offset, s.length).unsqueeze(0);
      const at::Tensor alone = model->forward({.input_ids = ids});
      EXPECT_LT(max_abs_diff(varlen[s.row].narrow(0, s.offset, s.length).unsqueeze(0), alone), 1e-5)
          << type << " sample at row " << s.row << " offset " << s.offset;
    }
    EXPECT_LT(max_abs_diff(varlen, model->forward(mask_inputs(p))), 1e-5) << type;
    const at::Tensor derived = model->forward(
        {.input_ids = p.input_ids, .position_ids = p.position_ids, .segment_ids = p.segment_ids});
    EXPECT_TRUE(at::equal(varlen, derived)) << type;
  }
}

std::map<std::string, at::Tensor> gradients(CausalLM& model, const ForwardInputs& inputs,
                                            bool checkpointing) {
  model.train();
  model.set_gradient_checkpointing(checkpointing);
  model.zero_grad();
  at::Tensor logits = model.forward(inputs);
  at::cross_entropy_loss(logits.flatten(0, 1), inputs.input_ids.roll(-1, 1).flatten()).backward();
  std::map<std::string, at::Tensor> grads;
  for (const auto& item : model.named_parameters()) {
    if (item.value().grad().defined()) grads[item.key()] = item.value().grad().clone();
  }
  return grads;
}

TEST(PackedModel, CheckpointedVarlenGradientsEqualPlainAndMaskPathOnes) {
  for (const std::string& type : kTypes) {
    auto model = testing::random_model(config_of(type), 5, at::kDouble);
    const PackedRows p = packed_rows();
    const auto plain = gradients(*model, varlen_inputs(p), false);
    const auto checkpointed = gradients(*model, varlen_inputs(p), true);
    const auto masked = gradients(*model, mask_inputs(p), false);
    ASSERT_GT(plain.size(), 10u) << type;
    ASSERT_EQ(checkpointed.size(), plain.size()) << type;
    for (const auto& [name, grad] : plain) {
      EXPECT_LE(max_abs_diff(grad, checkpointed.at(name)), 1e-12) << type << " " << name;
      EXPECT_LE(max_abs_diff(grad, masked.at(name)), 1e-10) << type << " " << name;
    }
  }
}

TEST(PackedModel, RefusesCuSeqlensThatDoNotFitTheBatch) {
  auto model = testing::random_model(config_of("llama"), 1);
  const PackedRows p = packed_rows();
  torch::NoGradGuard no_grad;
  ForwardInputs bad = varlen_inputs(p);
  bad.cu_seqlens = at::tensor({0, 12, 23}, at::kInt);
  EXPECT_THROW(model->forward(bad), Error);
  bad = varlen_inputs(p);
  bad.max_seqlen = 3;
  EXPECT_THROW(model->forward(bad), Error);
  KvCache cache;
  bad = varlen_inputs(p);
  bad.cache = &cache;
  try {
    model->forward(bad);
    ADD_FAILURE() << "cu_seqlens with a KV cache accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
  }
}

// ---- CUDA: the flash kernel against the per-segment path ----

// Turns the math SDPA backend off for the scope, so nothing on the GPU can fall back to it.
class MathSdpaOff {
 public:
  MathSdpaOff() : was_(at::globalContext().userEnabledMathSDP()) {
    at::globalContext().setSDPUseMath(false);
  }
  ~MathSdpaOff() { at::globalContext().setSDPUseMath(was_); }

 private:
  bool was_;
};

// |a - b| relative to the size of b.
double relative_diff(const at::Tensor& a, const at::Tensor& b) {
  return max_abs_diff(a, b) / (1.0 + b.abs().max().item<double>());
}

TEST(VarlenAttentionCuda, FlashKernelMatchesThePerSegmentPath) {
  REQUIRE_CUDA();
  const at::Device gpu(at::kCUDA, 0);
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    for (int64_t head_dim : {8, 64, 128}) {
      for (std::optional<int64_t> window : {std::optional<int64_t>(), std::optional<int64_t>(3)}) {
        Qkv x = random_qkv(26, head_dim, 11);
        // Round the inputs to the GPU dtype first, so both sides start from the same numbers.
        for (at::Tensor* t : {&x.q, &x.k, &x.v}) *t = t->to(dtype).to(at::kFloat);
        const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
        PackedSegments on_gpu = segments_of(kLengths);
        on_gpu.cu_seqlens = on_gpu.cu_seqlens_host.to(gpu);
        WithGrads flash;
        {
          MathSdpaOff math_off;
          const at::Tensor q = x.q.to(gpu, dtype), k = x.k.to(gpu, dtype), v = x.v.to(gpu, dtype);
          ASSERT_TRUE(varlen_uses_flash_kernel(q, k, v));
          flash = run_with_grads(
              [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
                return varlen_attention(q, k, v, on_gpu, window, scale);
              },
              q, k, v, x.upstream);
        }
        const WithGrads reference = run_with_grads(
            [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
              return varlen_attention(q, k, v, segments_of(kLengths), window, scale);
            },
            x.q, x.k, x.v, x.upstream);
        const double tolerance = dtype == at::kBFloat16 ? 2e-2 : 4e-3;
        const std::string label = std::string(c10::toString(dtype)) + " hd " +
                                  std::to_string(head_dim) + (window ? " window 3" : "");
        ASSERT_TRUE(flash.dq.defined() && flash.dk.defined() && flash.dv.defined()) << label;
        EXPECT_LT(relative_diff(flash.out.cpu(), reference.out), tolerance) << label;
        EXPECT_LT(relative_diff(flash.dq.cpu(), reference.dq), 3 * tolerance) << label;
        EXPECT_LT(relative_diff(flash.dk.cpu(), reference.dk), 3 * tolerance) << label;
        EXPECT_LT(relative_diff(flash.dv.cpu(), reference.dv), 3 * tolerance) << label;
      }
    }
  }
}

TEST(VarlenAttentionCuda, Float32FallsBackToThePerSegmentPath) {
  REQUIRE_CUDA();
  const at::Device gpu(at::kCUDA, 0);
  const Qkv x = random_qkv(26, 8, 12);
  const at::Tensor q = x.q.to(gpu), k = x.k.to(gpu), v = x.v.to(gpu);
  EXPECT_FALSE(varlen_uses_flash_kernel(q, k, v));
  PackedSegments device_only;
  device_only.cu_seqlens = segments_of(kLengths).cu_seqlens_host.to(gpu);
  at::Tensor out;
  {
    MathSdpaOff math_off;
    out = varlen_attention(q, k, v, device_only, 3, 0.3);
  }
  const at::Tensor expected = attend_each_alone(x.q, x.k, x.v, kLengths, 3, 0.3);
  EXPECT_LT(max_abs_diff(out.cpu(), expected), 1e-4);
}

TEST(VarlenAttentionCuda, PackedBfloat16ModelMatchesTheCpuModel) {
  REQUIRE_CUDA();
  const at::Device gpu(at::kCUDA, 0);
  for (const std::string& type : kTypes) {
    auto cpu_model = testing::random_model(config_of(type), 9);
    auto gpu_model = std::make_shared<CausalLM>(
        config_of(type), at::TensorOptions().dtype(at::kBFloat16).device(gpu));
    {
      torch::NoGradGuard no_grad;
      auto source = cpu_model->named_parameters(true);
      for (auto& item : gpu_model->named_parameters(true)) item.value().copy_(source[item.key()]);
    }
    const PackedRows p = packed_rows();
    at::Tensor expected;
    {
      torch::NoGradGuard no_grad;
      expected = cpu_model->forward(varlen_inputs(p));
    }
    MathSdpaOff math_off;
    // Batch tensors copied ahead, as the trainer does, with the host copy of cu_seqlens beside.
    ForwardInputs inputs = varlen_inputs(p);
    inputs.input_ids = p.input_ids.to(gpu, /*non_blocking=*/true);
    inputs.position_ids = p.position_ids.to(gpu, /*non_blocking=*/true);
    inputs.cu_seqlens = p.cu_seqlens.to(gpu, /*non_blocking=*/true);
    inputs.cu_seqlens_host = p.cu_seqlens;
    at::Tensor logits;
    {
      torch::NoGradGuard no_grad;
      logits = gpu_model->forward(inputs);
    }
    EXPECT_LT(relative_diff(logits.cpu().to(at::kFloat), expected), 5e-2) << type;
    // Checkpointed and plain backward passes through the kernel agree.
    auto plain = gradients(*gpu_model, inputs, false);
    auto checkpointed = gradients(*gpu_model, inputs, true);
    for (const auto& [name, grad] : plain) {
      EXPECT_TRUE(at::isfinite(grad).all().item<bool>()) << type << " " << name;
      EXPECT_LT(relative_diff(checkpointed.at(name).to(at::kFloat), grad.to(at::kFloat)), 1e-2)
          << type << " " << name;
    }
  }
}

}  // namespace
}  // namespace qtrain

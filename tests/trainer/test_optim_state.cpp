// Optimizer state: exact resume through a safetensors round trip for every kind, validation of
// mismatched state dicts, option and kind errors.
#include "core/error.h"
#include "formats/safetensors/safetensors.h"
#include "tests/support/test_support.h"
#include "trainer/optim/optimizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

namespace qtrain {
namespace {

const char* const kKinds[] = {"adamw", "paged_adamw", "adamw_8bit", "paged_adamw_8bit"};

AdamWOptions options() {
  AdamWOptions o;
  o.lr = 3e-3;
  o.weight_decay = 0.02;
  return o;
}

// A large (8-bit states), a small (float32 states under 8-bit) and a bf16 parameter.
NamedParameters make_params(uint64_t seed) {
  at::manual_seed(seed);
  return {{"base.layers.0.q_proj.lora_A.weight", at::randn({16, 640}).set_requires_grad(true)},
          {"base.layers.0.q_proj.lora_B.weight", at::randn({40, 16}).set_requires_grad(true)},
          {"base.layers.0.v_proj.lora_A.weight",
           at::randn({16, 512}).to(at::kBFloat16).set_requires_grad(true)}};
}

NamedParameters clone_params(const NamedParameters& params) {
  NamedParameters out;
  for (const auto& [name, p] : params) {
    out.emplace_back(name, p.detach().clone().set_requires_grad(true));
  }
  return out;
}

void set_grads(NamedParameters& params, int step) {
  at::manual_seed(1000 + step);
  for (auto& [name, p] : params) p.mutable_grad() = at::randn(p.sizes()).to(p.scalar_type());
}

std::map<std::string, at::Tensor> round_trip(const std::map<std::string, at::Tensor>& state,
                                             const testing::ScratchDir& dir) {
  const std::string path = dir.file("optimizer.safetensors");
  write_safetensors(path, NamedTensors(state.begin(), state.end()));
  const auto file = SafetensorsFile::open(path);
  std::map<std::string, at::Tensor> out;
  for (const std::string& name : file->names()) out[name] = file->tensor(name).clone();
  return out;
}

TEST(OptimState, ResumeIsBitExactForEveryKind) {
  testing::ScratchDir dir("optim-state");
  for (const std::string kind : kKinds) {
    NamedParameters straight = make_params(1);
    auto a = make_optimizer(kind, straight, options());
    NamedParameters resumed;
    std::map<std::string, at::Tensor> saved;
    for (int step = 1; step <= 10; ++step) {
      set_grads(straight, step);
      a->step();
      if (step == 5) {
        resumed = clone_params(straight);
        saved = round_trip(a->state_dict(), dir);
      }
    }
    auto b = make_optimizer(kind, resumed, options());
    b->load_state_dict(saved);
    EXPECT_EQ(b->steps(), 5);
    for (int step = 6; step <= 10; ++step) {
      set_grads(resumed, step);
      b->step();
    }
    for (size_t i = 0; i < straight.size(); ++i) {
      EXPECT_TRUE(straight[i].second.detach().equal(resumed[i].second.detach()))
          << kind << " " << straight[i].first;
    }
    const auto sa = a->state_dict();
    const auto sb = b->state_dict();
    ASSERT_EQ(sa.size(), sb.size()) << kind;
    for (const auto& [key, t] : sa) EXPECT_TRUE(t.equal(sb.at(key))) << kind << " " << key;
  }
}

TEST(OptimState, KeysNameParametersAndMoments) {
  NamedParameters params = make_params(2);
  auto opt = make_optimizer("adamw_8bit", params, options());
  const auto s = opt->state_dict();
  EXPECT_EQ(s.at("step").scalar_type(), at::kLong);
  EXPECT_EQ(s.at("base.layers.0.q_proj.lora_A.weight.exp_avg.codes").scalar_type(), at::kByte);
  EXPECT_EQ(s.at("base.layers.0.q_proj.lora_A.weight.exp_avg.absmax").sizes(),
            at::IntArrayRef({40}));
  EXPECT_EQ(s.at("base.layers.0.q_proj.lora_B.weight.exp_avg").scalar_type(), at::kFloat);
  EXPECT_EQ(s.at("base.layers.0.v_proj.lora_A.weight.exp_avg_sq.codes").sizes(),
            at::IntArrayRef({16, 512}));
  // The bf16 parameter's float32 master weights.
  EXPECT_EQ(s.at("base.layers.0.v_proj.lora_A.weight.master").scalar_type(), at::kFloat);
  EXPECT_EQ(s.at("base.layers.0.v_proj.lora_A.weight.master").sizes(), at::IntArrayRef({16, 512}));
  EXPECT_EQ(s.count("base.layers.0.q_proj.lora_A.weight.master"), 0u);
  EXPECT_EQ(s.size(), 1u + 5 + 3 + 6);
}

// Every mismatch names the offending key and leaves the optimizer as it was.
TEST(OptimState, MismatchedStateIsRejectedWithTheKey) {
  NamedParameters params = make_params(3);
  auto opt = make_optimizer("adamw", params, options());
  set_grads(params, 1);
  opt->step();
  const auto good = opt->state_dict();
  const std::string a = "base.layers.0.q_proj.lora_A.weight";

  auto expect_error = [&](std::map<std::string, at::Tensor> state, ErrorKind kind,
                          const std::string& key) {
    try {
      opt->load_state_dict(state);
      ADD_FAILURE() << "no error for " << key;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), kind) << e.what();
      EXPECT_EQ(e.context().tensor, key) << e.what();
    }
    EXPECT_EQ(opt->steps(), 1);
  };

  auto missing = good;
  missing.erase(a + ".exp_avg_sq");
  expect_error(missing, ErrorKind::kShape, a + ".exp_avg_sq");
  auto wrong_dtype = good;
  wrong_dtype[a + ".exp_avg"] = good.at(a + ".exp_avg").to(at::kHalf);
  expect_error(wrong_dtype, ErrorKind::kFormat, a + ".exp_avg");
  auto wrong_shape = good;
  wrong_shape[a + ".exp_avg"] = at::zeros({640, 16});
  expect_error(wrong_shape, ErrorKind::kShape, a + ".exp_avg");
  auto extra = good;
  extra["base.layers.9.k_proj.lora_A.weight.exp_avg"] = at::zeros({2});
  expect_error(extra, ErrorKind::kShape, "base.layers.9.k_proj.lora_A.weight.exp_avg");
  auto negative = good;
  negative["step"] = at::scalar_tensor(-1, at::kLong);
  expect_error(negative, ErrorKind::kFormat, "step");
  // Issue 24: a NaN moment used to reach the adapters on the first step, blamed on the data.
  auto nan_moment = good;
  nan_moment[a + ".exp_avg_sq"] = good.at(a + ".exp_avg_sq").clone();
  nan_moment[a + ".exp_avg_sq"].view({-1})[7] = std::nan("");
  expect_error(nan_moment, ErrorKind::kFormat, a + ".exp_avg_sq");
  auto inf_moment = good;
  inf_moment[a + ".exp_avg"] = good.at(a + ".exp_avg").clone();
  inf_moment[a + ".exp_avg"].view({-1})[0] = INFINITY;
  expect_error(inf_moment, ErrorKind::kFormat, a + ".exp_avg");

  // The state of another kind: the 8-bit codes are not AdamW moments.
  auto eight_bit = make_optimizer("adamw_8bit", clone_params(params), options());
  expect_error(eight_bit->state_dict(), ErrorKind::kShape, a + ".exp_avg");
  // ... and the 8-bit kind's block scales are checked too.
  auto eight_bit_state = eight_bit->state_dict();
  for (auto& [key, t] : eight_bit_state) {
    if (key.find(".absmax") != std::string::npos) t.view({-1})[0] = std::nan("");
  }
  auto eight_bit_params = clone_params(params);
  auto eight_bit_opt = make_optimizer("adamw_8bit", eight_bit_params, options());
  try {
    eight_bit_opt->load_state_dict(eight_bit_state);
    ADD_FAILURE() << "a NaN block scale was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat) << e.what();
    EXPECT_NE(e.context().tensor.find(".absmax"), std::string::npos) << e.what();
  }

  // Nothing was copied by the failed loads.
  const auto after = opt->state_dict();
  for (const auto& [key, t] : good) EXPECT_TRUE(t.equal(after.at(key))) << key;
}

TEST(OptimState, PlainAndPagedStatesAreInterchangeable) {
  NamedParameters params = make_params(4);
  auto paged = make_optimizer("paged_adamw_8bit", params, options());
  set_grads(params, 1);
  paged->step();
  auto plain = make_optimizer("adamw_8bit", clone_params(params), options());
  plain->load_state_dict(paged->state_dict());
  EXPECT_EQ(plain->steps(), 1);
}

TEST(OptimState, UnknownKindAndBadOptionsAreConfigErrors) {
  try {
    make_optimizer("sgd", make_params(5), options());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.context().field, "training.optimizer");
  }
  AdamWOptions bad = options();
  bad.beta2 = 1.0;
  try {
    make_optimizer("adamw", make_params(5), bad);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.context().field, "training.beta2");
  }
  auto opt = make_optimizer("adamw", make_params(5), options());
  EXPECT_THROW(opt->set_lr(-1), Error);
  EXPECT_THROW(make_optimizer("adamw", {{"a", at::zeros({2})}, {"a", at::zeros({2})}}, options()),
               Error);
}

}  // namespace
}  // namespace qtrain

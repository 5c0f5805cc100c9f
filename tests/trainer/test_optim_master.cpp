// Float32 master weights of non-float32 parameters, for every optimizer kind: a bf16 run follows
// the float32 run of the same values exactly (the master is that run's parameter), updates below
// bf16's resolution accumulate, and the master is saved, validated and restored with the state.
#include "core/error.h"
#include "tests/support/test_support.h"
#include "trainer/optim/optimizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

namespace qtrain {
namespace {

const char* const kKinds[] = {"adamw", "paged_adamw", "adamw_8bit", "paged_adamw_8bit"};

AdamWOptions tiny_lr() {
  AdamWOptions o;
  o.lr = 1e-4;
  o.weight_decay = 0.01;
  return o;
}

// A blockwise-sized parameter (8192 elements: 8-bit states) and a small one (float32 states
// under the 8-bit kinds), with values in [1, 2) where one bf16 ulp is 2^-7 = 0.0078: an Adam step
// of ~lr = 1e-4 is far below half an ulp.
NamedParameters make_params(at::ScalarType dtype) {
  at::manual_seed(7);
  return {{"big", (at::rand({16, 512}) + 1).to(dtype).set_requires_grad(true)},
          {"small", (at::rand({40}) + 1).to(dtype).set_requires_grad(true)}};
}

NamedParameters as_float32(const NamedParameters& params) {
  NamedParameters out;
  for (const auto& [name, p] : params) {
    out.emplace_back(name, p.detach().to(at::kFloat).set_requires_grad(true));
  }
  return out;
}

// Gradients with bf16 values (so the float32 run sees exactly what the bf16 run converts) and a
// consistent sign, so Adam's steps add up instead of cancelling.
void set_grads(NamedParameters& params, int step) {
  at::manual_seed(100 + step);
  for (auto& [name, p] : params) {
    const at::Tensor g = (at::rand(p.sizes()) + 0.5).to(at::kBFloat16);
    p.mutable_grad() = g.to(p.scalar_type());
  }
}

TEST(OptimMaster, Bf16RunIsTheFloat32RunRounded) {
  constexpr int kSteps = 100;
  for (const std::string kind : kKinds) {
    NamedParameters bf16 = make_params(at::kBFloat16);
    const NamedParameters init = as_float32(bf16);
    NamedParameters f32 = as_float32(bf16);
    auto opt16 = make_optimizer(kind, bf16, tiny_lr());
    auto opt32 = make_optimizer(kind, f32, tiny_lr());
    for (int step = 1; step <= kSteps; ++step) {
      set_grads(bf16, step);
      set_grads(f32, step);
      opt16->step();
      opt32->step();
      if (step == 1) {
        // The premise: one step rounded straight into bf16 changes nothing.
        for (size_t i = 0; i < f32.size(); ++i) {
          ASSERT_TRUE(
              f32[i].second.detach().to(at::kBFloat16).equal(init[i].second.to(at::kBFloat16)))
              << kind;
        }
      }
    }
    const auto state = opt16->state_dict();
    for (size_t i = 0; i < bf16.size(); ++i) {
      const std::string& name = bf16[i].first;
      const at::Tensor master = state.at(name + ".master");
      const at::Tensor reference = f32[i].second.detach();
      EXPECT_TRUE(master.equal(reference)) << kind << " " << name;
      EXPECT_TRUE(bf16[i].second.detach().equal(reference.to(at::kBFloat16)))
          << kind << " " << name;
      // ~100 * lr = 0.01 accumulated: most elements moved by at least one ulp.
      const double moved = bf16[i]
                               .second.detach()
                               .ne(init[i].second.to(at::kBFloat16))
                               .to(at::kDouble)
                               .mean()
                               .item<double>();
      std::printf("%s %s: %.0f%% of bf16 elements moved in %d steps of lr 1e-4\n", kind.c_str(),
                  name.c_str(), 100 * moved, kSteps);
      EXPECT_GT(moved, 0.5) << kind << " " << name;
    }
  }
}

TEST(OptimMaster, StateDictKeysAndBytes) {
  for (const std::string kind : kKinds) {
    NamedParameters params = make_params(at::kBFloat16);
    params.emplace_back("f32", at::zeros({8}).set_requires_grad(true));
    auto opt = make_optimizer(kind, params, tiny_lr());
    const auto state = opt->state_dict();
    // Before the first step the master is the parameter's value.
    EXPECT_TRUE(state.at("big.master").equal(params[0].second.detach().to(at::kFloat))) << kind;
    EXPECT_EQ(state.at("small.master").sizes(), at::IntArrayRef({40})) << kind;
    EXPECT_EQ(state.count("f32.master"), 0u) << kind;
    const int64_t masters = 4 * (8192 + 40);
    const bool eight_bit = kind.find("8bit") != std::string::npos;
    const int64_t moments = eight_bit ? 2 * 8192 + 2 * 32 * 4 + 8 * (40 + 8) : 8 * (8192 + 40 + 8);
    EXPECT_EQ(opt->state_bytes(), moments + masters) << kind;
  }
}

// A checkpoint written before master weights existed has no "<name>.master": it loads, and the
// master is taken from the (restored) parameter at the next step.
TEST(OptimMaster, CheckpointWithoutMastersResumes) {
  for (const std::string kind : kKinds) {
    NamedParameters a = make_params(at::kBFloat16);
    auto opt = make_optimizer(kind, a, tiny_lr());
    for (int step = 1; step <= 3; ++step) {
      set_grads(a, step);
      opt->step();
    }
    auto old_state = opt->state_dict();
    old_state.erase("big.master");
    old_state.erase("small.master");

    // The reference: a float32 run from the same moments and the bf16 parameters' values.
    NamedParameters b = as_float32(a);
    auto reference = make_optimizer(kind, b, tiny_lr());
    reference->load_state_dict(old_state);

    NamedParameters c;
    for (const auto& [name, p] : a)
      c.emplace_back(name, p.detach().clone().set_requires_grad(true));
    auto resumed = make_optimizer(kind, c, tiny_lr());
    resumed->load_state_dict(old_state);
    EXPECT_EQ(resumed->steps(), 3);
    for (int step = 4; step <= 6; ++step) {
      set_grads(b, step);
      set_grads(c, step);
      reference->step();
      resumed->step();
    }
    const auto s = resumed->state_dict();
    for (size_t i = 0; i < c.size(); ++i) {
      EXPECT_TRUE(s.at(c[i].first + ".master").equal(b[i].second.detach())) << kind;
    }
  }
}

TEST(OptimMaster, MastersAreValidated) {
  NamedParameters params = make_params(at::kBFloat16);
  auto opt = make_optimizer("adamw", params, tiny_lr());
  set_grads(params, 1);
  opt->step();
  const auto good = opt->state_dict();
  auto expect_error = [&](std::map<std::string, at::Tensor> state, ErrorKind kind,
                          const std::string& key) {
    try {
      opt->load_state_dict(state);
      ADD_FAILURE() << "no error for " << key;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), kind) << e.what();
      EXPECT_EQ(e.context().tensor, key) << e.what();
    }
  };
  auto wrong_dtype = good;
  wrong_dtype["big.master"] = good.at("big.master").to(at::kBFloat16);
  expect_error(wrong_dtype, ErrorKind::kFormat, "big.master");
  auto wrong_shape = good;
  wrong_shape["big.master"] = at::zeros({512, 16});
  expect_error(wrong_shape, ErrorKind::kShape, "big.master");
  auto nan_master = good;
  nan_master["small.master"] = good.at("small.master").clone();
  nan_master["small.master"][3] = std::nan("");
  expect_error(nan_master, ErrorKind::kFormat, "small.master");
  // A float32 parameter has no master: an entry for one is unexpected.
  NamedParameters f32 = as_float32(params);
  auto opt32 = make_optimizer("adamw", f32, tiny_lr());
  try {
    opt32->load_state_dict(good);
    ADD_FAILURE() << "a master of a float32 parameter was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kShape) << e.what();
    EXPECT_NE(e.context().tensor.find(".master"), std::string::npos) << e.what();
  }
}

// Elements of a loaded master that no longer round to the parameter (the adapter weights were
// replaced after the checkpoint was written) are taken from the parameter; the others are kept.
TEST(OptimMaster, StaleMasterElementsFollowTheParameter) {
  NamedParameters params = make_params(at::kBFloat16);
  auto opt = make_optimizer("adamw", params, tiny_lr());
  for (int step = 1; step <= 20; ++step) {
    set_grads(params, step);
    opt->step();
  }
  const auto saved = opt->state_dict();
  const at::Tensor master = saved.at("small.master");
  ASSERT_FALSE(master.equal(params[1].second.detach().to(at::kFloat)));  // finer than bf16
  const at::NoGradGuard no_grad;
  params[1].second[5] = 3.0;
  opt->load_state_dict(saved);
  const at::Tensor loaded = opt->state_dict().at("small.master");
  EXPECT_EQ(loaded[5].item<float>(), 3.0f);
  EXPECT_TRUE(loaded.slice(0, 6).equal(master.slice(0, 6)));
  EXPECT_TRUE(loaded.slice(0, 0, 5).equal(master.slice(0, 0, 5)));
}

// The master is taken at the first step, so parameter values written after construction (adapter
// loading, a data-parallel broadcast) are what the optimizer starts from.
TEST(OptimMaster, MasterIsTakenAtTheFirstStep) {
  for (const std::string kind : kKinds) {
    NamedParameters early = make_params(at::kBFloat16);
    auto opt = make_optimizer(kind, early, tiny_lr());
    {
      const at::NoGradGuard no_grad;
      for (auto& [name, p] : early) p.add_(1.0);
    }
    NamedParameters late;
    for (const auto& [name, p] : early) {
      late.emplace_back(name, p.detach().clone().set_requires_grad(true));
    }
    auto reference = make_optimizer(kind, late, tiny_lr());
    for (int step = 1; step <= 3; ++step) {
      set_grads(early, step);
      set_grads(late, step);
      opt->step();
      reference->step();
    }
    for (size_t i = 0; i < early.size(); ++i) {
      EXPECT_TRUE(early[i].second.detach().equal(late[i].second.detach())) << kind;
    }
  }
}

}  // namespace
}  // namespace qtrain

// GradReducer over a real two-rank Gloo group (two threads of this process on loopback): the
// gradients every rank ends with equal the sum of what each rank alone would accumulate, across
// buckets, with gradient accumulation before the synchronised pass, and when a parameter gets a
// second gradient after its bucket already went out.
#include "tests/support/test_support.h"
#include "trainer/distributed/grad_reducer.h"
#include "trainer/distributed/process_group.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>
#include <thread>
#include <vector>

namespace qtrain {
namespace {

// Parameters of sizes 5, 3x4 and 7: with 40-byte buckets the reducer makes two buckets,
// {c, b} and {a} (reverse registration order).
// Values from a formula, not the global generator, which the two rank threads would race for.
std::vector<at::Tensor> make_params() {
  auto param = [](std::vector<int64_t> shape, double phase) {
    const int64_t n = c10::multiply_integers(shape);
    return (at::arange(n, at::kFloat) * 0.37 + phase).sin().reshape(shape).set_requires_grad(true);
  };
  return {param({5}, 0.1), param({3, 4}, 0.2), param({7}, 0.3)};
}

// Rank r's micro-batches: one before the synchronised pass, then `passes` backward calls in it.
void accumulate(std::vector<at::Tensor>& p, int rank, int passes, GradReducer* reducer) {
  auto loss = [&](int micro) {
    const double x = 1.0 + rank + 0.5 * micro;
    return (p[0] * p[0] * x).sum() + (p[1].sin() * x).sum() + (p[2] * x * x).sum() +
           (p[0].sum() * p[2].sum());  // p[0] and p[2] used twice in one graph
  };
  loss(0).backward();
  if (reducer) reducer->prepare();
  for (int pass = 0; pass < passes; ++pass) loss(1 + pass).backward();
  if (reducer) reducer->finish();
}

void check_two_ranks(int passes) {
  // What each rank alone accumulates, summed: the reference.
  std::vector<at::Tensor> expected;
  for (int rank = 0; rank < 2; ++rank) {
    std::vector<at::Tensor> p = make_params();
    accumulate(p, rank, passes, nullptr);
    for (size_t i = 0; i < p.size(); ++i) {
      if (rank == 0)
        expected.push_back(p[i].grad().clone());
      else
        expected[i] += p[i].grad();
    }
  }
  const int port = testing::free_loopback_port();
  std::vector<std::vector<at::Tensor>> grads(2);
  std::vector<int64_t> buckets(2), bytes(2), overlapped(2);
  auto rank_main = [&](int rank) {
    LaunchEnv env;
    env.rank = rank;
    env.world_size = 2;
    env.master_port = port;
    auto group = ProcessGroup::connect(env, "gloo", std::chrono::seconds(30));
    std::vector<at::Tensor> p = make_params();
    GradReducer reducer(*group, p, 40);
    accumulate(p, rank, passes, &reducer);
    for (const auto& t : p) grads[rank].push_back(t.grad().clone());
    buckets[rank] = reducer.num_buckets();
    bytes[rank] = reducer.bytes_per_step();
    overlapped[rank] = reducer.overlapped_buckets();
    group->barrier();
  };
  std::thread other(rank_main, 1);
  rank_main(0);
  other.join();
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_EQ(buckets[rank], 2);
    EXPECT_EQ(bytes[rank], (5 + 12 + 7) * 4);
    // Every bucket filled during backward, so each started there, before finish().
    EXPECT_EQ(overlapped[rank], 2);
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_TRUE(at::allclose(grads[rank][i], expected[i], 1e-6, 1e-6))
          << "rank " << rank << " parameter " << i << "\n"
          << grads[rank][i] << "\n"
          << expected[i];
    }
  }
}

TEST(GradReducer, SumsAccumulatedGradientsAcrossRanksAndBuckets) {
  check_two_ranks(1);
}

TEST(GradReducer, ASecondGradientAfterItsBucketWentOutIsStillSummed) {
  check_two_ranks(2);
}

}  // namespace
}  // namespace qtrain

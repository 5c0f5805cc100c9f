// Two ranks of one real Gloo group as two threads of the test process, on loopback, and the
// ShardComm the sharded base uses over it.
#pragma once

#include "models/sharded_linear_slot.h"
#include "tests/support/test_support.h"
#include "trainer/distributed/process_group.h"

#include <chrono>
#include <functional>
#include <memory>
#include <thread>

namespace qtrain::testing {

class ProcessGroupComm : public ShardComm {
 public:
  explicit ProcessGroupComm(ProcessGroup& group) : group_(group) {}
  int rank() const override { return group_.rank(); }
  int world_size() const override { return group_.world_size(); }
  std::function<void()> all_gather(at::Tensor& output, at::Tensor& input) override {
    return group_.all_gather_async(output, input);
  }
  void broadcast(at::Tensor& tensor, int root) override { group_.broadcast(tensor, root); }
  void scatter(at::Tensor& output, const at::Tensor& input, int root) override {
    group_.scatter(output, input, root);
  }

 private:
  ProcessGroup& group_;
};

// Runs body(rank, comm) on two ranks (threads) of one Gloo group.
inline void on_two_ranks(const std::function<void(int, std::shared_ptr<ShardComm>)>& body) {
  const int port = free_loopback_port();
  auto rank_main = [&](int rank) {
    LaunchEnv env;
    env.rank = rank;
    env.world_size = 2;
    env.master_port = port;
    auto group = ProcessGroup::connect(env, "gloo", std::chrono::seconds(30));
    body(rank, std::make_shared<ProcessGroupComm>(*group));
    group->barrier();
  };
  std::thread other(rank_main, 1);
  rank_main(0);
  other.join();
}

}  // namespace qtrain::testing

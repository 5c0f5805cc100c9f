#include "trainer/distributed/process_group.h"

#include "core/error.h"
#include "core/log.h"
#include "trainer/distributed/process_group_state.h"

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>

namespace qtrain {
namespace {

const std::string kKeyPrefix = "qtrain/";

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& master_addr) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    std::string first(ifname);
    first = first.substr(0, first.find(','));
    return c10d::ProcessGroupGloo::createDeviceForInterface(first);
  }
  if (is_loopback(master_addr)) return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

std::optional<int> inherited_listen_fd() {
  const char* fd = std::getenv("QTRAIN_MASTER_LISTEN_FD");
  if (fd == nullptr || *fd == '\0') return std::nullopt;
  return std::atoi(fd);
}

// Gloo collectives are enqueued under this lock. c10d's flight recorder (torch 2.11) registers a
// group's status in a shared std::map before taking its own mutex, so two groups of one process
// (ranks as threads, as in the tests) starting collectives at once corrupt that map. Enqueueing a
// Gloo collective never waits for peers; NCCL's first one may (communicator setup), and NCCL runs
// one group per process, so it goes unlocked.
std::mutex& gloo_enqueue_mutex() {
  static std::mutex mutex;
  return mutex;
}

template <typename Start>
c10::intrusive_ptr<c10d::Work> enqueue(const std::string& backend, Start&& start) {
  if (backend != "gloo") return start();
  std::lock_guard<std::mutex> lock(gloo_enqueue_mutex());
  return start();
}

}  // namespace

ProcessGroup::ProcessGroup(LaunchEnv env, std::string backend, std::chrono::milliseconds timeout)
    : env_(std::move(env)),
      backend_(std::move(backend)),
      timeout_(timeout),
      state_(std::make_unique<State>()) {}

ProcessGroup::~ProcessGroup() = default;

void ProcessGroup::guarded(const std::string& op, const std::function<void()>& body) const {
  auto fail = [&](const std::string& what) {
    throw_error(ErrorKind::kPeer,
                "rank " + std::to_string(env_.rank) + " of " + std::to_string(env_.world_size) +
                    ": " + op + " failed (" + what +
                    "); a peer rank died, hung longer than distributed.timeout_s = " +
                    std::to_string(timeout_.count() / 1000) +
                    " s, or cannot be reached; see the other ranks' logs");
  };
  try {
    body();
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    std::string what = e.what_without_backtrace();
    if (const size_t newline = what.find('\n'); newline != std::string::npos) {
      what.resize(newline);
    }
    fail(what);
  } catch (const std::exception& e) {
    fail(e.what());
  }
}

std::unique_ptr<ProcessGroup> ProcessGroup::connect(const LaunchEnv& env,
                                                    const std::string& backend,
                                                    std::chrono::milliseconds timeout) {
  std::unique_ptr<ProcessGroup> group(new ProcessGroup(env, backend, timeout));
  group->guarded("rendezvous at " + env.master_addr + ":" + std::to_string(env.master_port), [&] {
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(env.master_port);
    options.isServer = env.rank == 0;
    options.numWorkers = static_cast<size_t>(env.world_size);
    options.waitWorkers = true;
    options.timeout = timeout;
    if (env.rank == 0) {
      if (const auto fd = inherited_listen_fd()) {
        options.masterListenFd = *fd;
        options.useLibUV = false;
      }
    }
    group->state_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  });
  group->guarded(backend + " process group", [&] {
    if (backend == "nccl") {
      group->state_->backend = make_nccl_backend(group->state_->store, env.rank, env.world_size,
                                                 env.local_rank, timeout);
    } else if (backend == "gloo") {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      options->devices.push_back(gloo_device(env.master_addr));
      group->state_->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
          group->state_->store, env.rank, env.world_size, options);
    } else {
      throw_error(ErrorKind::kConfig, "unknown process group backend '" + backend + "'",
                  {.field = "distributed.backend"});
    }
  });
  log::info("rank ", env.rank, " of ", env.world_size, " joined (", backend, ", ", env.source,
            ", rendezvous ", env.master_addr, ":", env.master_port, ")");
  return group;
}

void ProcessGroup::all_reduce_sum(at::Tensor& tensor) {
  all_reduce_sum_async(tensor)();
}

std::function<void()> ProcessGroup::all_reduce_sum_async(at::Tensor& tensor) {
  c10::intrusive_ptr<c10d::Work> work;
  guarded("all-reduce", [&] {
    std::vector<at::Tensor> tensors{tensor};
    work = enqueue(backend_,
                   [&] { return state_->backend->allreduce(tensors, c10d::AllreduceOptions{}); });
  });
  return [this, work] { guarded("all-reduce", [&] { work->wait(); }); };
}

std::function<void()> ProcessGroup::all_gather_async(at::Tensor& output, at::Tensor& input) {
  c10::intrusive_ptr<c10d::Work> work;
  guarded("all-gather", [&] {
    work = enqueue(backend_, [&] {
      return state_->backend->_allgather_base(output, input, c10d::AllgatherOptions{});
    });
  });
  return [this, work] { guarded("all-gather", [&] { work->wait(); }); };
}

void ProcessGroup::all_reduce_max(at::Tensor& tensor) {
  guarded("all-reduce", [&] {
    std::vector<at::Tensor> tensors{tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::MAX;
    enqueue(backend_, [&] { return state_->backend->allreduce(tensors, options); })->wait();
  });
}

at::Device ProcessGroup::device() const {
  if (backend_ == "nccl") return {at::kCUDA, static_cast<c10::DeviceIndex>(env_.local_rank)};
  return at::kCPU;
}

void ProcessGroup::all_reduce_sum(std::vector<double>& values) {
  at::Tensor t = at::tensor(values, at::dtype(at::kDouble)).to(device());
  all_reduce_sum(t);
  t = t.cpu();
  std::copy(t.data_ptr<double>(), t.data_ptr<double>() + t.numel(), values.begin());
}

double ProcessGroup::all_reduce_max(double value) {
  at::Tensor t = at::full({1}, value, at::dtype(at::kDouble)).to(device());
  all_reduce_max(t);
  return t.cpu().item<double>();
}

void ProcessGroup::broadcast(at::Tensor& tensor, int root) {
  guarded("broadcast", [&] {
    std::vector<at::Tensor> tensors{tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    enqueue(backend_, [&] { return state_->backend->broadcast(tensors, options); })->wait();
  });
}

void ProcessGroup::scatter(at::Tensor& output, const at::Tensor& input, int root) {
  guarded("scatter", [&] {
    std::vector<at::Tensor> outputs{output};
    std::vector<std::vector<at::Tensor>> inputs;
    if (rank() == root) inputs.push_back(input.chunk(world_size()));
    c10d::ScatterOptions options;
    options.rootRank = root;
    enqueue(backend_, [&] { return state_->backend->scatter(outputs, inputs, options); })->wait();
  });
}

void ProcessGroup::barrier() {
  // A one-element all-reduce on the backend's own device type, so NCCL needs no barrier device.
  at::Tensor token = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(device()));
  guarded("barrier", [&] {
    std::vector<at::Tensor> tensors{token};
    enqueue(backend_, [&] {
      return state_->backend->allreduce(tensors, c10d::AllreduceOptions{});
    })->wait();
  });
}

void ProcessGroup::store_set(const std::string& key, const std::string& value) {
  guarded("store write", [&] {
    state_->store->set(kKeyPrefix + key, std::vector<uint8_t>(value.begin(), value.end()));
  });
}

std::string ProcessGroup::store_get(const std::string& key) {
  std::string value;
  guarded("store read of " + key, [&] {
    const std::vector<uint8_t> bytes = state_->store->get(kKeyPrefix + key);
    value.assign(bytes.begin(), bytes.end());
  });
  return value;
}

void ProcessGroup::check_same(const std::string& what, const std::string& value) {
  const std::string round = "check/" + std::to_string(check_round_++) + "/";
  store_set(round + std::to_string(env_.rank), value);
  const std::string reference = store_get(round + "0");
  std::string differing;
  for (int r = 1; r < env_.world_size; ++r) {
    if (store_get(round + std::to_string(r)) != reference) {
      differing += (differing.empty() ? "" : ", ") + std::to_string(r);
    }
  }
  if (!differing.empty()) {
    throw_error(ErrorKind::kPeer, "ranks " + differing + " have a different " + what +
                                      " than rank 0 (every rank must run the same recipe, "
                                      "overrides and world size)");
  }
}

#ifndef QTRAIN_WITH_CUDA
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int,
                                                    int, int, std::chrono::milliseconds) {
  throw_error(ErrorKind::kUnsupported,
              "this qtrain was built without CUDA, so it has no NCCL backend; use gloo",
              {.field = "distributed.backend"});
}
#endif

}  // namespace qtrain

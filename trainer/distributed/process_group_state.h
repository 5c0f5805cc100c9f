// The c10d objects behind a ProcessGroup (kept out of process_group.h so its users do not parse
// the c10d headers).
#pragma once

#include "trainer/distributed/process_group.h"

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace qtrain {

struct ProcessGroup::State {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

// ProcessGroupNCCL (process_group_nccl.cpp, built with CUDA); Error(kUnsupported) otherwise.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size, int device,
                                                    std::chrono::milliseconds timeout);

}  // namespace qtrain

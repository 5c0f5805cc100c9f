// training.deterministic: the same recipe, seed and hardware give the same losses bit for bit on
// CUDA too. It selects PyTorch's deterministic kernels (at::globalContext()
// .setDeterministicAlgorithms: e.g. index_add/scatter without atomics, flash attention's
// deterministic backward) and the fixed cuBLAS workspace they need (CUBLAS_WORKSPACE_CONFIG
// =:4096:8, unless the environment already sets it). An operation with no deterministic kernel
// then fails naming the field rather than silently varying. What it costs is measured by
// tools/gpu (bench_train.sh runs both). CPU kernels are deterministic already; there this is a
// no-op apart from the same check.
#pragma once

namespace qtrain {

// Call before the first CUDA matmul of the process.
void use_deterministic_kernels();

}  // namespace qtrain

#include "trainer/deterministic_kernels.h"

#include "core/log.h"

#include <ATen/Context.h>

#include <cstdlib>

namespace qtrain {

void use_deterministic_kernels() {
  ::setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
  at::globalContext().setBenchmarkCuDNN(false);
  log::info("training.deterministic: deterministic kernels (cuBLAS workspace ",
            std::getenv("CUBLAS_WORKSPACE_CONFIG"), ")");
}

}  // namespace qtrain

#include "quant/cuda/common.cuh"

namespace qtrain::cuda::detail {

BlockMap block_map(int64_t blocksize) {
  int shift = -1;
  if ((blocksize & (blocksize - 1)) == 0) {
    shift = 0;
    while ((int64_t{1} << shift) < blocksize) ++shift;
  }
  return {shift, blocksize};
}

void unsupported_dtype(const char* op, at::ScalarType type) {
  throw_error(ErrorKind::kUnsupported,
              std::string(op) + ": no CUDA kernel for dtype " + c10::toString(type));
}

at::Tensor flat_input(const at::Tensor& x) {
  at::Tensor flat = x.reshape({-1});
  if (flat.scalar_type() == at::kDouble) flat = flat.to(at::kFloat);
  return flat.contiguous();
}

at::ScalarType kernel_out_dtype(at::ScalarType out_dtype) {
  return out_dtype == at::kDouble ? at::kFloat : out_dtype;
}

at::Tensor finish_output(const at::Tensor& out, at::ScalarType out_dtype) {
  return out.scalar_type() == out_dtype ? out : out.to(out_dtype);
}

}  // namespace qtrain::cuda::detail

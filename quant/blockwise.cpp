// Device dispatch of the blockwise kernels: checks the arguments once, then runs the CPU
// reference or, for CUDA tensors, the kernels of quant/cuda/.
#include "quant/blockwise.h"

#include "core/error.h"
#include "quant/blockwise_cpu.h"

#ifdef QTRAIN_WITH_CUDA
#include "quant/cuda/blockwise_cuda.h"
#endif

#include <ATen/ATen.h>

#include <string>

#ifndef QTRAIN_WITH_CUDA
// Stand-ins that are never reached: on_cuda() refuses CUDA tensors in a build without kernels.
namespace qtrain::cuda {
namespace {
[[noreturn]] void unreachable() {
  throw_error(ErrorKind::kInternal, "CUDA kernel called in a build without CUDA");
}
std::pair<at::Tensor, at::Tensor> quantize_4bit(const at::Tensor&, QuantType, int64_t) {
  unreachable();
}
at::Tensor dequantize_4bit(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                           int64_t, at::ScalarType) {
  unreachable();
}
std::pair<at::Tensor, at::Tensor> quantize_blockwise_8bit(const at::Tensor&, const at::Tensor&,
                                                          int64_t) {
  unreachable();
}
at::Tensor dequantize_blockwise_8bit(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     int64_t, at::ScalarType) {
  unreachable();
}
std::pair<at::Tensor, at::Tensor> quantize_int8(const at::Tensor&, int64_t) {
  unreachable();
}
at::Tensor dequantize_int8(const at::Tensor&, const at::Tensor&, int64_t, at::ScalarType) {
  unreachable();
}
}  // namespace
}  // namespace qtrain::cuda
#endif

namespace qtrain {
namespace {

int64_t num_blocks(int64_t n, int64_t blocksize) {
  return (n + blocksize - 1) / blocksize;
}

std::string dims(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

void check_blocksize(const char* op, int64_t blocksize, bool four_bit) {
  if (blocksize <= 0 || (four_bit && blocksize % 2 != 0)) {
    throw_error(ErrorKind::kConfig,
                std::string(op) + ": blocksize must be a positive" + (four_bit ? " even" : "") +
                    " number, got " + std::to_string(blocksize),
                {.field = "blocksize"});
  }
}

void check_float_dtype(const char* op, const char* what, at::ScalarType type) {
  if (!at::isFloatingType(type)) {
    throw_error(ErrorKind::kUnsupported, std::string(op) + ": " + what +
                                             " must be a floating-point type, got " +
                                             c10::toString(type));
  }
}

// `t` must be defined, of `dtype`, with `numel` elements (any shape).
void check_tensor(const char* op, const char* what, const at::Tensor& t, at::ScalarType dtype,
                  int64_t numel) {
  if (!t.defined()) {
    throw_error(ErrorKind::kShape, std::string(op) + ": " + what + " is missing");
  }
  if (t.scalar_type() != dtype || t.numel() != numel) {
    throw_error(ErrorKind::kShape, std::string(op) + ": " + what + " must be " +
                                       c10::toString(dtype) + " with " + std::to_string(numel) +
                                       " elements, got " + c10::toString(t.scalar_type()) + " " +
                                       dims(t));
  }
}

// All tensors on one device, CPU or CUDA; returns true for CUDA.
bool on_cuda(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  const c10::Device device = (*tensors.begin())->device();
  for (const at::Tensor* t : tensors) {
    if (t->device() != device) {
      throw_error(ErrorKind::kUnsupported, std::string(op) + ": tensors on " + device.str() +
                                               " and " + t->device().str() +
                                               "; all must be on one device");
    }
  }
  if (device.is_cpu()) return false;
  if (!device.is_cuda()) {
    throw_error(ErrorKind::kUnsupported,
                std::string(op) + ": no kernel for device " + device.str());
  }
#ifndef QTRAIN_WITH_CUDA
  throw_error(ErrorKind::kUnsupported,
              std::string(op) + ": tensor is on " + device.str() +
                  " but this build of qtrain has no CUDA kernels (nvcc was not found)");
#endif
  return true;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> quantize_4bit(const at::Tensor& x, QuantType type,
                                                int64_t blocksize) {
  const char* op = "quantize_4bit";
  check_blocksize(op, blocksize, true);
  check_float_dtype(op, "input", x.scalar_type());
  if (type != QuantType::kNF4 && type != QuantType::kFP4) {
    throw_error(ErrorKind::kUnsupported, "quantize_4bit: the type must be nf4 or fp4");
  }
  if (on_cuda(op, {&x})) return cuda::quantize_4bit(x, type, blocksize);
  return cpu::quantize_4bit(x, type, blocksize);
}

at::Tensor dequantize_4bit(const at::Tensor& packed, const at::Tensor& absmax,
                           const at::Tensor& code, int64_t n, int64_t blocksize,
                           at::ScalarType out_dtype) {
  const char* op = "dequantize_4bit";
  check_blocksize(op, blocksize, true);
  check_float_dtype(op, "output dtype", out_dtype);
  if (n < 0) throw_error(ErrorKind::kShape, "dequantize_4bit: negative element count");
  check_tensor(op, "packed", packed, at::kByte, (n + 1) / 2);
  check_tensor(op, "absmax", absmax, at::kFloat, num_blocks(n, blocksize));
  check_tensor(op, "code", code, at::kFloat, 16);
  if (on_cuda(op, {&packed, &absmax, &code})) {
    return cuda::dequantize_4bit(packed, absmax, code, n, blocksize, out_dtype);
  }
  return cpu::dequantize_4bit(packed, absmax, code, n, blocksize, out_dtype);
}

std::pair<at::Tensor, at::Tensor> quantize_blockwise_8bit(const at::Tensor& x,
                                                          const at::Tensor& code,
                                                          int64_t blocksize) {
  const char* op = "quantize_blockwise_8bit";
  check_blocksize(op, blocksize, false);
  check_float_dtype(op, "input", x.scalar_type());
  check_tensor(op, "code", code, at::kFloat, 256);
  if (on_cuda(op, {&x, &code})) return cuda::quantize_blockwise_8bit(x, code, blocksize);
  return cpu::quantize_blockwise_8bit(x, code, blocksize);
}

at::Tensor dequantize_blockwise_8bit(const at::Tensor& codes, const at::Tensor& absmax,
                                     const at::Tensor& code, int64_t blocksize,
                                     at::ScalarType out_dtype) {
  const char* op = "dequantize_blockwise_8bit";
  check_blocksize(op, blocksize, false);
  check_float_dtype(op, "output dtype", out_dtype);
  if (!codes.defined()) throw_error(ErrorKind::kShape, "dequantize_blockwise_8bit: no codes");
  check_tensor(op, "codes", codes, at::kByte, codes.numel());
  check_tensor(op, "absmax", absmax, at::kFloat, num_blocks(codes.numel(), blocksize));
  check_tensor(op, "code", code, at::kFloat, 256);
  if (on_cuda(op, {&codes, &absmax, &code})) {
    return cuda::dequantize_blockwise_8bit(codes, absmax, code, blocksize, out_dtype);
  }
  return cpu::dequantize_blockwise_8bit(codes, absmax, code, blocksize, out_dtype);
}

std::pair<at::Tensor, at::Tensor> quantize_int8(const at::Tensor& x, int64_t blocksize) {
  const char* op = "quantize_int8";
  check_blocksize(op, blocksize, false);
  check_float_dtype(op, "input", x.scalar_type());
  if (on_cuda(op, {&x})) return cuda::quantize_int8(x, blocksize);
  return cpu::quantize_int8(x, blocksize);
}

at::Tensor dequantize_int8(const at::Tensor& q, const at::Tensor& absmax, int64_t blocksize,
                           at::ScalarType out_dtype) {
  const char* op = "dequantize_int8";
  check_blocksize(op, blocksize, false);
  check_float_dtype(op, "output dtype", out_dtype);
  if (!q.defined()) throw_error(ErrorKind::kShape, "dequantize_int8: no codes");
  check_tensor(op, "q", q, at::kChar, q.numel());
  check_tensor(op, "absmax", absmax, at::kFloat, num_blocks(q.numel(), blocksize));
  if (on_cuda(op, {&q, &absmax})) return cuda::dequantize_int8(q, absmax, blocksize, out_dtype);
  return cpu::dequantize_int8(q, absmax, blocksize, out_dtype);
}

}  // namespace qtrain

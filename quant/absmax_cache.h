// The decoded block absmax of a double-quantized 4-bit weight, decoded once and kept.
//
// bitsandbytes' double quantization stores each block's float32 absmax as an 8-bit code plus a
// nested scale (formats.md §1.3, about 1 byte per block). Undoing it on every dequantize is a
// pass over all blocks; a QuantizedTensor that opts in (its absmax_cache set; off by default, so
// a base's memory is what qmem counts) keeps the result here instead, through a shared_ptr, so
// its copies share one. Memory: 4 bytes (float32) per block, i.e. 1/8 of the packed codes at
// blocksize 64 (0.5 bits per weight; 1 MiB for a 4096x4096 weight whose codes take 8 MiB).
// Only CPU states are kept: on CUDA the decode is cheap and GPU memory is what double
// quantization saves, so CUDA weights decode on every call as before.
//
// The cache remembers which nested tensors it decoded (their identity, data pointer and version
// counter, the offset and the blocksize), holding them weakly: a copy whose nested tensors were
// replaced or written in place never receives another state's values, and the cache never keeps
// those tensors alive. Once the tensors it decoded are gone, the next state asking refills it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorImpl.h>
#include <c10/core/UndefinedTensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>

namespace qtrain {

struct NestedAbsmax;

class AbsmaxCache {
 public:
  // The float32 [nblocks] absmax of `nested`: the kept one when it is this state's, else
  // decode()'s result, kept for next time. Undefined, without calling decode, where the cache
  // does not apply: a state not on the CPU, or the cache holds another state whose tensors are
  // still alive (a copy with other nested tensors). The result is shared: never write to it.
  // Thread-safe; concurrent first calls decode once.
  at::Tensor get(const NestedAbsmax& nested, const std::function<at::Tensor()>& decode);

  int64_t decodes() const;  // how many times get() has called decode

 private:
  struct TensorKey {
    using Strong = c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
    c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> impl{Strong()};
    const void* data = nullptr;
    int64_t version = 0;
  };
  struct Key {
    std::array<TensorKey, 3> tensors;  // nested codes, absmax, code
    float offset = 0;
    int64_t blocksize = 0;
  };
  static Key key_of(const NestedAbsmax& nested);
  bool holds(const NestedAbsmax& nested) const;
  bool owner_alive() const;

  mutable std::mutex mutex_;
  bool filled_ = false;
  Key key_;
  at::Tensor decoded_;
  int64_t decoded_version_ = 0;
  int64_t decodes_ = 0;
};

}  // namespace qtrain

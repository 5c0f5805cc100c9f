#include "quant/absmax_cache.h"

#include "quant/quantized_tensor.h"

#include <cstring>

namespace qtrain {
namespace {

std::array<const at::Tensor*, 3> nested_tensors(const NestedAbsmax& nested) {
  return {&nested.codes, &nested.absmax, &nested.code};
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

}  // namespace

AbsmaxCache::Key AbsmaxCache::key_of(const NestedAbsmax& nested) {
  Key key;
  const auto tensors = nested_tensors(nested);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = *tensors[i];
    key.tensors[i].impl =
        c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(t.getIntrusivePtr());
    key.tensors[i].data = t.defined() ? t.data_ptr() : nullptr;
    key.tensors[i].version = t.defined() ? static_cast<int64_t>(t._version()) : 0;
  }
  key.offset = nested.offset;
  key.blocksize = nested.blocksize;
  return key;
}

bool AbsmaxCache::holds(const NestedAbsmax& nested) const {
  if (!filled_ || static_cast<int64_t>(decoded_._version()) != decoded_version_) return false;
  if (!same_bits(key_.offset, nested.offset) || key_.blocksize != nested.blocksize) return false;
  const auto tensors = nested_tensors(nested);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorKey& k = key_.tensors[i];
    const at::Tensor& t = *tensors[i];
    // While the weak reference lives the TensorImpl is not freed, so its address stays unique.
    if (k.impl.expired() || k.impl._unsafe_get_target() != t.unsafeGetTensorImpl() ||
        k.data != t.data_ptr() || k.version != static_cast<int64_t>(t._version())) {
      return false;
    }
  }
  return true;
}

bool AbsmaxCache::owner_alive() const {
  if (!filled_) return false;
  for (const TensorKey& k : key_.tensors) {
    if (k.impl.expired()) return false;
  }
  return true;
}

at::Tensor AbsmaxCache::get(const NestedAbsmax& nested, const std::function<at::Tensor()>& decode) {
  for (const at::Tensor* t : nested_tensors(nested)) {
    if (!t->defined() || !t->device().is_cpu()) return at::Tensor();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (holds(nested)) return decoded_;
  // Another live state keeps its values unless this one is the same tensors changed in place.
  const bool same_owner =
      filled_ && key_.tensors[0].impl._unsafe_get_target() == nested.codes.unsafeGetTensorImpl();
  if (owner_alive() && !same_owner) return at::Tensor();
  decoded_ = decode();
  decoded_version_ = static_cast<int64_t>(decoded_._version());
  key_ = key_of(nested);
  filled_ = true;
  ++decodes_;
  return decoded_;
}

int64_t AbsmaxCache::decodes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return decodes_;
}

}  // namespace qtrain

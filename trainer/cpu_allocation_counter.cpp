#include "trainer/cpu_allocation_counter.h"

#include "core/error.h"

#include <c10/core/CPUAllocator.h>

#include <atomic>

namespace qtrain {
namespace {

// The allocation the wrapped allocator made, kept as the wrapper's DataPtr context so that
// freeing it frees the original (through its own deleter) and subtracts its size.
struct CountedAllocation {
  c10::DataPtr original;
  int64_t bytes = 0;
};

class CountingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return inner_->allocate(n);
    auto* counted = new CountedAllocation{inner_->allocate(n), static_cast<int64_t>(n)};
    void* data = counted->original.get();
    const c10::Device device = counted->original.device();
    add(counted->bytes);
    return {data, counted, &free_counted, device};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void install() {
    if (installed_.exchange(true)) {
      throw_error(ErrorKind::kInternal, "a CpuAllocationCounter is already installed");
    }
    inner_ = c10::GetCPUAllocator();
    c10::SetCPUAllocator(this, kPriority);
  }

  void uninstall() {
    c10::SetCPUAllocator(inner_, kPriority);
    installed_ = false;
  }

  int64_t current() const { return current_.load(); }
  int64_t peak() const { return peak_.load(); }
  void reset_peak() { peak_.store(current_.load()); }

  static CountingAllocator& instance() {
    static auto* allocator = new CountingAllocator();  // outlives every storage it counted
    return *allocator;
  }

 private:
  // Above the default's 0, so a later SetCPUAllocator of priority 0 cannot displace the counter.
  static constexpr uint8_t kPriority = 1;

  void add(int64_t bytes) {
    const int64_t now = current_.fetch_add(bytes) + bytes;
    int64_t seen = peak_.load();
    while (now > seen && !peak_.compare_exchange_weak(seen, now)) {
    }
  }

  static void free_counted(void* context) {
    auto* counted = static_cast<CountedAllocation*>(context);
    instance().current_.fetch_sub(counted->bytes);
    delete counted;  // frees the original allocation
  }

  c10::Allocator* inner_ = nullptr;
  std::atomic<bool> installed_{false};
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
};

}  // namespace

CpuAllocationCounter::CpuAllocationCounter() {
  CountingAllocator::instance().install();
  CountingAllocator::instance().reset_peak();
}

CpuAllocationCounter::~CpuAllocationCounter() {
  CountingAllocator::instance().uninstall();
}

int64_t CpuAllocationCounter::current() const {
  return CountingAllocator::instance().current();
}

int64_t CpuAllocationCounter::peak() const {
  return CountingAllocator::instance().peak();
}

void CpuAllocationCounter::reset_peak() {
  CountingAllocator::instance().reset_peak();
}

}  // namespace qtrain

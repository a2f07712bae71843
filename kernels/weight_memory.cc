#include "kernels/weight_memory.h"

#include <sys/mman.h>

#include <new>

namespace w8a8::kernels {
namespace {

constexpr size_t kHugePageBytes = size_t{2} << 20;

std::align_val_t WeightAlignment(size_t bytes) {
  return std::align_val_t{bytes >= kHugePageBytes ? kHugePageBytes : 64};
}

}  // namespace

void* AllocateWeightBytes(size_t bytes) {
  void* pointer = ::operator new(bytes, WeightAlignment(bytes));
  if (bytes >= kHugePageBytes) {
    // Only advice: a failure leaves the buffer as it is, which is correct, only slower.
    (void)::madvise(pointer, bytes / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);
  }
  return pointer;
}

void FreeWeightBytes(void* pointer, size_t bytes) {
  ::operator delete(pointer, WeightAlignment(bytes));
}

}  // namespace w8a8::kernels

// Memory for weight matrices that the kernels stream on every decode step.
#pragma once

#include <cstddef>
#include <vector>

namespace w8a8::kernels {

// Allocates `bytes` on a 64-byte boundary, so each 64-byte line is one cache line. Buffers of
// 2 MiB or more start on a 2 MiB boundary and are offered to Linux as transparent huge
// pages (madvise), which saves TLB misses when a decode step reads every weight once. Where
// Linux grants no huge pages, the buffer keeps 4 KiB pages. Throws std::bad_alloc.
void* AllocateWeightBytes(size_t bytes);
// Frees a buffer that AllocateWeightBytes returned for the same `bytes`.
void FreeWeightBytes(void* pointer, size_t bytes);

// A standard allocator over AllocateWeightBytes.
template <typename T>
struct WeightAllocator {
  using value_type = T;

  WeightAllocator() = default;
  template <typename U>
  explicit WeightAllocator(const WeightAllocator<U>&) {}

  T* allocate(size_t count) { return static_cast<T*>(AllocateWeightBytes(count * sizeof(T))); }
  void deallocate(T* pointer, size_t count) { FreeWeightBytes(pointer, count * sizeof(T)); }
  friend bool operator==(const WeightAllocator&, const WeightAllocator&) { return true; }
};

// A vector of weights in memory from AllocateWeightBytes.
template <typename T>
using WeightVector = std::vector<T, WeightAllocator<T>>;

}  // namespace w8a8::kernels

// Parallel loops that skip OpenMP when they would run on one thread.
//
// libgomp allocates a team for every parallel region of one thread and frees it at the end,
// because it keeps only teams of several threads for reuse. That is an aligned malloc and a
// free per region, and the malloc may first consolidate the heap's free lists. A gRPC server fills
// those lists with small blocks, and with --threads 1 on stories260K these calls took about
// 12% of the server's CPU. A region runs on one thread when the team size is 1, when a loop
// is too small to be worth threading, or inside another parallel region. These helpers then
// call the body directly.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace w8a8::kernels {

// The minimum work that the kernels split among threads: elements for loops that touch each
// element a few times (quantization, scaling), multiply-adds for products and attention.
// Below it, waking another thread is likely to cost more than the work it takes over, most of
// all under OMP_WAIT_POLICY=passive, where each wake-up is a futex call. Both values are
// chosen, not measured crossovers. 2^20 is the size of the smallest product of the
// Llama-3.2-1B shape at one row (512 x 2048), so every product of that model and of larger
// ones still uses all threads.
inline constexpr int64_t kMinThreadedElements = int64_t{1} << 16;
inline constexpr int64_t kMinThreadedMacs = int64_t{1} << 20;

// Returns the team size of a parallel region started here, at most `requested`. Inside an
// active parallel region it is 1: the kernels never nest regions, which libgomp's default of
// one active level would run on one thread anyway.
inline int RegionThreads(int64_t requested) {
  if (requested <= 1 || omp_in_parallel()) return 1;
  return static_cast<int>(std::min<int64_t>(requested, omp_get_max_threads()));
}

// Calls body(index, count) once on each of min(threads, team size) threads, index in
// [0, count). With one thread it calls body(0, 1) on the calling thread.
template <typename Body>
void ParallelRegion(int64_t threads, Body&& body) {
  const int team = RegionThreads(threads);
  if (team == 1) {
    body(int64_t{0}, int64_t{1});
    return;
  }
#pragma omp parallel num_threads(team)
  body(static_cast<int64_t>(omp_get_thread_num()), static_cast<int64_t>(omp_get_num_threads()));
}

// Calls body(i) for i in [0, n). When `threaded` is true and more than one thread is
// available, the team's threads split the range in contiguous parts (schedule static).
template <typename Body>
void ParallelFor(int64_t n, bool threaded, Body&& body) {
  if (!threaded || RegionThreads(n) == 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) body(i);
}

// As ParallelFor, but threads take one index at a time (schedule dynamic), for items of
// uneven cost.
template <typename Body>
void ParallelForDynamic(int64_t n, bool threaded, Body&& body) {
  if (!threaded || RegionThreads(n) == 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace w8a8::kernels

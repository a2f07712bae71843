#include "kernels/threads.h"

#include <omp.h>

#include <atomic>

namespace w8a8::kernels {
namespace {

std::atomic<int> compute_threads{0};

}  // namespace

void SetComputeThreads(int threads) {
  compute_threads.store(threads > 0 ? threads : 0);
  UseComputeThreads();
}

void UseComputeThreads() {
  if (const int threads = compute_threads.load(); threads > 0) omp_set_num_threads(threads);
}

}  // namespace w8a8::kernels

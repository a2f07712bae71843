#include "tools/bench_machine.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>

#include "kernels/cpu_features.h"

namespace w8a8::tools {
namespace {

constexpr int64_t kBufferBytes = int64_t{1} << 30;
constexpr int64_t kBytesPerIteration = 256;  // Four 64-byte loads per loop iteration.
// Instructions per compute-probe call: kChains independent chains (the 16 registers of the asm
// loops below, enough to hide the latency at two instructions per cycle) times
// kComputeIterations.
constexpr int kChains = 16;
constexpr int64_t kComputeIterations = int64_t{1} << 18;

// Keeps the read sums alive so the compiler cannot drop the reads.
std::atomic<int64_t> sink{0};

__attribute__((target("avx512f"))) int64_t SumBytes(const uint8_t* data, int64_t bytes) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < bytes; i += kBytesPerIteration) {
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(data + i));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(data + i + 64));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(data + i + 128));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(data + i + 192));
  }
  const __m512i total = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
  // GCC 12's _mm512_reduce_* intrinsics trip -Wmaybe-uninitialized, so lanes are summed here.
  alignas(64) int64_t lanes[8];
  _mm512_store_si512(lanes, total);
  return std::accumulate(lanes, lanes + 8, int64_t{0});
}

// The compute probes run 16 independent accumulator chains in zmm0..zmm15 for `iterations`
// rounds, in one asm block so that the compiler can neither fold the loop nor move the
// accumulators to the stack. Zeroed accumulators keep the FP32 chains free of denormals.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void RunDotProducts(int64_t iterations) {
  const __m512i a = _mm512_set1_epi8(1);
  const __m512i b = _mm512_set1_epi8(2);
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
      "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
      "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
      "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
      "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
      "vpxord %%zmm10, %%zmm10, %%zmm10\n\t"
      "vpxord %%zmm11, %%zmm11, %%zmm11\n\t"
      "vpxord %%zmm12, %%zmm12, %%zmm12\n\t"
      "vpxord %%zmm13, %%zmm13, %%zmm13\n\t"
      "vpxord %%zmm14, %%zmm14, %%zmm14\n\t"
      "vpxord %%zmm15, %%zmm15, %%zmm15\n\t"
      "1:\n\t"
      "vpdpbusd %[b], %[a], %%zmm0\n\t"
      "vpdpbusd %[b], %[a], %%zmm1\n\t"
      "vpdpbusd %[b], %[a], %%zmm2\n\t"
      "vpdpbusd %[b], %[a], %%zmm3\n\t"
      "vpdpbusd %[b], %[a], %%zmm4\n\t"
      "vpdpbusd %[b], %[a], %%zmm5\n\t"
      "vpdpbusd %[b], %[a], %%zmm6\n\t"
      "vpdpbusd %[b], %[a], %%zmm7\n\t"
      "vpdpbusd %[b], %[a], %%zmm8\n\t"
      "vpdpbusd %[b], %[a], %%zmm9\n\t"
      "vpdpbusd %[b], %[a], %%zmm10\n\t"
      "vpdpbusd %[b], %[a], %%zmm11\n\t"
      "vpdpbusd %[b], %[a], %%zmm12\n\t"
      "vpdpbusd %[b], %[a], %%zmm13\n\t"
      "vpdpbusd %[b], %[a], %%zmm14\n\t"
      "vpdpbusd %[b], %[a], %%zmm15\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      : [n] "+r"(iterations)
      : [a] "v"(a), [b] "v"(b)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
        "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc");
}

__attribute__((target("avx512f"))) void RunFmas(int64_t iterations) {
  const __m512 a = _mm512_set1_ps(1.0f);
  const __m512 b = _mm512_set1_ps(1e-7f);
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
      "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
      "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
      "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
      "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
      "vpxord %%zmm10, %%zmm10, %%zmm10\n\t"
      "vpxord %%zmm11, %%zmm11, %%zmm11\n\t"
      "vpxord %%zmm12, %%zmm12, %%zmm12\n\t"
      "vpxord %%zmm13, %%zmm13, %%zmm13\n\t"
      "vpxord %%zmm14, %%zmm14, %%zmm14\n\t"
      "vpxord %%zmm15, %%zmm15, %%zmm15\n\t"
      "1:\n\t"
      "vfmadd231ps %[b], %[a], %%zmm0\n\t"
      "vfmadd231ps %[b], %[a], %%zmm1\n\t"
      "vfmadd231ps %[b], %[a], %%zmm2\n\t"
      "vfmadd231ps %[b], %[a], %%zmm3\n\t"
      "vfmadd231ps %[b], %[a], %%zmm4\n\t"
      "vfmadd231ps %[b], %[a], %%zmm5\n\t"
      "vfmadd231ps %[b], %[a], %%zmm6\n\t"
      "vfmadd231ps %[b], %[a], %%zmm7\n\t"
      "vfmadd231ps %[b], %[a], %%zmm8\n\t"
      "vfmadd231ps %[b], %[a], %%zmm9\n\t"
      "vfmadd231ps %[b], %[a], %%zmm10\n\t"
      "vfmadd231ps %[b], %[a], %%zmm11\n\t"
      "vfmadd231ps %[b], %[a], %%zmm12\n\t"
      "vfmadd231ps %[b], %[a], %%zmm13\n\t"
      "vfmadd231ps %[b], %[a], %%zmm14\n\t"
      "vfmadd231ps %[b], %[a], %%zmm15\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      : [n] "+r"(iterations)
      : [a] "v"(a), [b] "v"(b)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
        "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc");
}

// Runs `probe` on `threads` threads at once until `seconds` have passed (and at least
// `min_runs` times) and returns the best rate in units of `work_per_thread` per second.
template <typename Probe>
double BestRate(int threads, double seconds, int min_runs, double work_per_thread, Probe probe) {
  double best = 0.0;
  const double start = omp_get_wtime();
  for (int run = 0; run < min_runs || omp_get_wtime() - start < seconds; ++run) {
    const double begin = omp_get_wtime();
#pragma omp parallel num_threads(threads)
    probe(omp_get_thread_num(), omp_get_num_threads());
    const double elapsed = omp_get_wtime() - begin;
    if (elapsed > 0) best = std::max(best, threads * work_per_thread / elapsed);
  }
  return best;
}

double MeasureRead(const uint8_t* buffer, int threads, double seconds) {
  // Each thread reads an equal slice, so the work per thread is the buffer over the threads.
  const int64_t slice = kBufferBytes / threads / kBytesPerIteration * kBytesPerIteration;
  return BestRate(threads, seconds, 3, static_cast<double>(slice) * 1e-9,
                  [&](int thread, int) {
                    const int64_t sum = SumBytes(buffer + thread * slice, slice);
                    sink.store(sum, std::memory_order_relaxed);
                  });
}

}  // namespace

MachineCeilings MeasureMachine(double seconds) {
  MachineCeilings machine;
  machine.threads = omp_get_max_threads();
  machine.avx512 = kernels::CpuSupports(kernels::Isa::kAvx512Vnni);
  machine.buffer_bytes = kBufferBytes;
  if (!machine.avx512) return machine;

  std::unique_ptr<uint8_t, decltype(&std::free)> buffer(
      static_cast<uint8_t*>(std::aligned_alloc(64, kBufferBytes)), &std::free);
  if (buffer == nullptr) {
    // The read ceilings stay 0, so no bandwidth fraction is reported later.
    std::fprintf(stderr,
                 "w8a8 bench: failed to allocate the %lld-byte read buffer. Bandwidth is not "
                 "measured.\n",
                 static_cast<long long>(kBufferBytes));
    machine.buffer_bytes = 0;
  } else {
    // Touch every page from the threads that read it later, so pages sit near those threads.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < kBufferBytes; i += 4096) {
      std::fill(buffer.get() + i, buffer.get() + i + 4096, uint8_t{1});
    }
    machine.read_gbs.one_thread = MeasureRead(buffer.get(), 1, seconds);
    machine.read_gbs.all_threads = MeasureRead(buffer.get(), machine.threads, seconds);
  }

  const double instructions = static_cast<double>(kChains) * kComputeIterations;
  const double int8_gops = instructions * 128 * 1e-9;
  const double fp32_gflops = instructions * 32 * 1e-9;
  auto dot_probe = [](int, int) { RunDotProducts(kComputeIterations); };
  auto fma_probe = [](int, int) { RunFmas(kComputeIterations); };
  machine.int8_gops.one_thread = BestRate(1, seconds, 3, int8_gops, dot_probe);
  machine.int8_gops.all_threads =
      BestRate(machine.threads, seconds, 3, int8_gops, dot_probe);
  machine.fp32_gflops.one_thread = BestRate(1, seconds, 3, fp32_gflops, fma_probe);
  machine.fp32_gflops.all_threads =
      BestRate(machine.threads, seconds, 3, fp32_gflops, fma_probe);
  return machine;
}

}  // namespace w8a8::tools

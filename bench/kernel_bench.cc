// Throughput of the kernels on the linear-layer shapes of Llama-3.2-1B (hidden 2048, KV
// projections 512, MLP 8192). Reports GOPS (2 * m * n * k operations per product) and GB/s
// (bytes of weights, activations and outputs touched once per product).
//
//   kernel_bench [--benchmark_filter=REGEX]     W8A8_ISA=avx2 lowers the ISA.
//
// The "cold" decode benchmarks cycle through copies of the weights that together exceed the
// last-level cache, as decoding a whole model does, so they measure DRAM bandwidth. The other
// benchmarks reuse one matrix that may stay in cache. Two ceilings run in the same binary, so
// that ratios come from one run: ReadBandwidth (an AVX-512 sum over 1 GiB, each thread reading
// its own slice) and DotProductPeak (independent vpdpbusd chains in registers). Cases named
// ".../threads:T" set the OpenMP thread count to T; the others use the default.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "benchmark/benchmark.h"
#include "kernels/cpu_features.h"
#include "kernels/fused.h"
#include "kernels/gemm.h"
#include "kernels/gemm_bf16.h"
#include "kernels/onednn_int8_matmul.h"
#include "kernels/weight_memory.h"
#include "tools/bench_common.h"

namespace w8a8::kernels {
namespace {

using tools::LinearShape;

// Benchmark names carry the dimensions, such as attn_qo_2048x2048.
std::string ShapeName(const LinearShape& shape) {
  return std::string(shape.name) + "_" + std::to_string(shape.n) + "x" + std::to_string(shape.k);
}
constexpr int64_t kRowCounts[] = {1, 16, 512};
// Bytes of weights the cold benchmarks cycle through: more than the last-level cache of
// current server CPUs.
constexpr int64_t kColdBytes = int64_t{1} << 30;

using tools::RandomFloats;
using tools::RandomInt8;

void SetCounters(benchmark::State& state, double operations, double bytes) {
  state.counters["GOPS"] = benchmark::Counter(operations * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Sets the OpenMP thread count for one benchmark and restores it afterwards. 0 keeps it.
class ScopedThreads {
 public:
  explicit ScopedThreads(int threads) : saved_(omp_get_max_threads()) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  ~ScopedThreads() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

// Per-channel weights for oneDNN's int8 matmul alone, for comparing it with the packed loop at
// any m. oneDNN keeps its own copy of the weights here, not the packed layout.
absl::StatusOr<std::unique_ptr<Int8Matmul>> CreateOneDnnOnly(std::span<const int8_t> weights,
                                                             int64_t n, int64_t k,
                                                             std::span<const float> scales) {
  std::vector<int32_t> compensation(n);
  for (int64_t row = 0; row < n; ++row) {
    int32_t sum = 0;
    for (int64_t col = 0; col < k; ++col) sum += weights[row * k + col];
    compensation[row] = -128 * sum;
  }
  auto onednn = internal::CreateOneDnnInt8Matmul(weights, n, k, scales, compensation);
  if (!onednn.ok()) return onednn.status();
  return std::unique_ptr<Int8Matmul>(std::move(onednn).value());
}

// Int8Matmul on one shape with `threads` OpenMP threads (0: the default). group_size 0 is
// per-channel, which Int8Matmul dispatches to oneDNN or the packed VNNI loop by m; with
// `onednn_only` it always runs oneDNN. group_size k is numerically the same per-channel
// product, and always runs the packed loop. Cold runs cycle through enough copies of the
// weights (1 GiB) that every product reads them from DRAM. GB/s counts the int8 weights plus
// the 8 bytes (int32 compensation and FP32 scale) that the packed loop reads per output row
// and group, the activations and the outputs.
void BenchInt8(benchmark::State& state, LinearShape shape, int64_t m, int64_t group_size,
               bool cold, int threads, bool onednn_only) {
  const ScopedThreads scoped_threads(threads);
  const int64_t n = shape.n, k = shape.k;
  const int64_t groups = group_size == 0 ? 1 : (k + group_size - 1) / group_size;
  const int64_t copies = cold ? std::max<int64_t>(1, kColdBytes / (n * k)) : 1;
  const std::vector<int8_t> weights = RandomInt8(n * k, 7);
  const std::vector<float> scales(n * groups, 0.01f);
  std::vector<std::unique_ptr<Int8Matmul>> matrices;
  for (int64_t copy = 0; copy < copies; ++copy) {
    auto matmul = onednn_only ? CreateOneDnnOnly(weights, n, k, scales)
                              : Int8Matmul::Create(weights, n, k, scales, group_size);
    if (!matmul.ok()) {
      state.SkipWithError(std::string(matmul.status().message()).c_str());
      return;
    }
    matrices.push_back(std::move(matmul).value());
  }
  const std::vector<int8_t> xq = RandomInt8(m * k, 99);
  const std::vector<float> x_scales(m, 0.02f);
  std::vector<float> y(m * n);
  int64_t next = 0;
  for (auto _ : state) {
    matrices[next]->Run(xq.data(), x_scales.data(), m, y.data());
    benchmark::DoNotOptimize(y.data());
    next = next + 1 == copies ? 0 : next + 1;
  }
  state.SetItemsProcessed(state.iterations() * m);
  SetCounters(state, 2.0 * m * n * k, double(n * k + m * k + 4 * m * n + 8 * n * groups));
}

void BenchF32(benchmark::State& state, LinearShape shape, int64_t m, bool cold) {
  const int64_t n = shape.n, k = shape.k;
  const int64_t copies = cold ? std::max<int64_t>(1, kColdBytes / (4 * n * k)) : 1;
  std::vector<std::vector<float>> weights;
  for (int64_t copy = 0; copy < copies; ++copy) {
    weights.push_back(RandomFloats(n * k, static_cast<uint32_t>(copy)));
  }
  const std::vector<float> x = RandomFloats(m * k, 99);
  std::vector<float> y(m * n);
  int64_t next = 0;
  for (auto _ : state) {
    GemmF32(x.data(), weights[next].data(), y.data(), m, n, k);
    benchmark::DoNotOptimize(y.data());
    next = next + 1 == copies ? 0 : next + 1;
  }
  SetCounters(state, 2.0 * m * n * k, 4.0 * double(n * k + m * k + m * n));
}

// Bf16Matrix::Multiply on the tied output matrix of Llama-3.2-1B (vocabulary 128256 x hidden
// 2048, 501 MiB), which alone exceeds the last-level cache, so every product reads it from
// DRAM. GB/s counts the BF16 weights, the FP32 activations and the outputs. With `allow_amx`
// false the product keeps to the FP32 arithmetic of the ISA path even where AMX is usable.
void BenchBf16LmHead(benchmark::State& state, int64_t m, bool allow_amx) {
  constexpr int64_t n = 128256, k = 2048;
  std::vector<uint16_t> weights(n * k);
  std::mt19937 engine(5);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (uint16_t& weight : weights) {
    const float value = normal(engine);
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    weight = static_cast<uint16_t>(bits >> 16);
  }
  const Bf16Matrix matrix(weights.data(), n, k);
  weights = {};
  const std::vector<float> x = RandomFloats(m * k, 99);
  std::vector<float> y(m * n);
  for (auto _ : state) {
    matrix.Multiply(ActiveIsa(), x.data(), m, y.data(), allow_amx);
    benchmark::DoNotOptimize(y.data());
  }
  SetCounters(state, 2.0 * m * n * k, 2.0 * double(n * k) + 4.0 * double(m * k + m * n));
}

void BenchQuantize(benchmark::State& state, int64_t m, int64_t k) {
  const std::vector<float> x = RandomFloats(m * k, 1);
  std::vector<int8_t> q(m * k);
  std::vector<float> scales(m);
  for (auto _ : state) {
    QuantizePerToken(x.data(), m, k, q.data(), scales.data());
    benchmark::DoNotOptimize(q.data());
  }
  SetCounters(state, double(m * k), double(5 * m * k));
}

void BenchRmsNormQuantize(benchmark::State& state, int64_t m, int64_t k) {
  const std::vector<float> x = RandomFloats(m * k, 1);
  const std::vector<float> weight = RandomFloats(k, 2);
  std::vector<int8_t> q(m * k);
  std::vector<float> scales(m);
  for (auto _ : state) {
    RmsNormQuantize(x.data(), weight.data(), 1e-5f, m, k, q.data(), scales.data());
    benchmark::DoNotOptimize(q.data());
  }
  SetCounters(state, double(m * k), double(5 * m * k + 4 * k));
}

void BenchSiluMulQuantize(benchmark::State& state, int64_t m, int64_t k) {
  const std::vector<float> gate = RandomFloats(m * k, 1);
  const std::vector<float> up = RandomFloats(m * k, 2);
  std::vector<int8_t> q(m * k);
  std::vector<float> scales(m);
  for (auto _ : state) {
    SiluMulQuantize(gate.data(), up.data(), m, k, q.data(), scales.data());
    benchmark::DoNotOptimize(q.data());
  }
  SetCounters(state, double(m * k), double(9 * m * k));
}

// Sums `bytes` bytes (a multiple of 4 * 64) as four sequential streams, one per quarter, so
// that a core keeps as many reads in flight as the decode kernel, which reads four streams.
__attribute__((target("avx512f"))) int64_t SumBytes(const uint8_t* data, int64_t bytes) {
  const int64_t quarter = bytes / 4;
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < quarter; i += 64) {
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(data + i));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(data + quarter + i));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(data + 2 * quarter + i));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(data + 3 * quarter + i));
  }
  alignas(64) int64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
  int64_t total = 0;
  for (int64_t lane : lanes) total += lane;
  return total;
}

// The read-bandwidth ceiling: `threads` threads each sum their own slice of a 1 GiB buffer,
// which is larger than the last-level cache, so every pass reads from DRAM. The buffer is
// weight memory, on transparent huge pages where Linux grants them, like the packed weights.
void BenchReadBandwidth(benchmark::State& state, int threads) {
  if (!CpuSupports(Isa::kAvx512Vnni)) {
    state.SkipWithError("ReadBandwidth needs AVX-512");
    return;
  }
  auto free_buffer = [](uint8_t* data) { FreeWeightBytes(data, kColdBytes); };
  std::unique_ptr<uint8_t, decltype(free_buffer)> buffer(nullptr, free_buffer);
  try {
    buffer.reset(static_cast<uint8_t*>(AllocateWeightBytes(kColdBytes)));
  } catch (const std::bad_alloc&) {
    state.SkipWithError("failed to allocate the 1 GiB read buffer");
    return;
  }
  const int64_t slice = kColdBytes / threads / 256 * 256;
  // Each thread first touches the pages it reads later.
#pragma omp parallel num_threads(threads)
  std::fill_n(buffer.get() + omp_get_thread_num() * slice, slice, uint8_t{1});
  for (auto _ : state) {
    int64_t total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    total += SumBytes(buffer.get() + omp_get_thread_num() * slice, slice);
    benchmark::DoNotOptimize(total);
  }
  SetCounters(state, 0.0, double(slice * threads));
}

// Runs `iterations` rounds of 16 independent vpdpbusd chains held in zmm0..zmm15. The asm
// keeps the compiler from folding the loop or spilling the accumulators.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void RunDotProducts(int64_t iterations) {
  const __m512i a = _mm512_set1_epi8(1);
  const __m512i b = _mm512_set1_epi8(2);
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\tvpxord %%zmm1, %%zmm1, %%zmm1\n\t"
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\tvpxord %%zmm3, %%zmm3, %%zmm3\n\t"
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\tvpxord %%zmm5, %%zmm5, %%zmm5\n\t"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\tvpxord %%zmm7, %%zmm7, %%zmm7\n\t"
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\tvpxord %%zmm9, %%zmm9, %%zmm9\n\t"
      "vpxord %%zmm10, %%zmm10, %%zmm10\n\tvpxord %%zmm11, %%zmm11, %%zmm11\n\t"
      "vpxord %%zmm12, %%zmm12, %%zmm12\n\tvpxord %%zmm13, %%zmm13, %%zmm13\n\t"
      "vpxord %%zmm14, %%zmm14, %%zmm14\n\tvpxord %%zmm15, %%zmm15, %%zmm15\n\t"
      "1:\n\t"
      "vpdpbusd %[b], %[a], %%zmm0\n\tvpdpbusd %[b], %[a], %%zmm1\n\t"
      "vpdpbusd %[b], %[a], %%zmm2\n\tvpdpbusd %[b], %[a], %%zmm3\n\t"
      "vpdpbusd %[b], %[a], %%zmm4\n\tvpdpbusd %[b], %[a], %%zmm5\n\t"
      "vpdpbusd %[b], %[a], %%zmm6\n\tvpdpbusd %[b], %[a], %%zmm7\n\t"
      "vpdpbusd %[b], %[a], %%zmm8\n\tvpdpbusd %[b], %[a], %%zmm9\n\t"
      "vpdpbusd %[b], %[a], %%zmm10\n\tvpdpbusd %[b], %[a], %%zmm11\n\t"
      "vpdpbusd %[b], %[a], %%zmm12\n\tvpdpbusd %[b], %[a], %%zmm13\n\t"
      "vpdpbusd %[b], %[a], %%zmm14\n\tvpdpbusd %[b], %[a], %%zmm15\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      : [n] "+r"(iterations)
      : [a] "v"(a), [b] "v"(b)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc");
}

// The compute ceiling of the VNNI loops: 128 operations (64 multiply-adds) per vpdpbusd, on
// `threads` threads at once.
void BenchDotProductPeak(benchmark::State& state, int threads) {
  if (!CpuSupports(Isa::kAvx512Vnni)) {
    state.SkipWithError("DotProductPeak needs AVX-512 VNNI");
    return;
  }
  constexpr int64_t kIterations = int64_t{1} << 16;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    RunDotProducts(kIterations);
  }
  SetCounters(state, double(threads) * kIterations * 16 * 128, 0.0);
}


std::string ThreadsSuffix(int threads) {
  return threads == 0 ? "" : "/threads:" + std::to_string(threads);
}

void RegisterInt8(const std::string& label, LinearShape shape, int64_t m, int64_t group_size,
                  bool cold, int threads, bool onednn_only = false) {
  const std::string name = label + (cold ? "/cold/" : "/") + ShapeName(shape) +
                           "/m=" + std::to_string(m) + ThreadsSuffix(threads);
  benchmark::RegisterBenchmark(name.c_str(), BenchInt8, shape, m, group_size, cold, threads,
                               onednn_only)
      ->Unit(benchmark::kMicrosecond)
      ->UseRealTime();
}

void RegisterAll() {
  for (int threads : {1, 2}) {
    benchmark::RegisterBenchmark(("ReadBandwidth/1GiB" + ThreadsSuffix(threads)).c_str(),
                                 BenchReadBandwidth, threads)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("DotProductPeak" + ThreadsSuffix(threads)).c_str(),
                                 BenchDotProductPeak, threads)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (const LinearShape& shape : tools::kLlama32OneBShapes) {
    // Decode, warm and from DRAM.
    for (int threads : {1, 2}) {
      for (bool cold : {false, true}) {
        RegisterInt8("Int8PerChannel", shape, 1, 0, cold, threads);
        RegisterInt8("Int8Group128", shape, 1, 128, cold, threads);
      }
    }
    // Batched decode, warm and from DRAM: the per-channel dispatch (the packed loop up to
    // m = 16) against oneDNN alone.
    for (int64_t m : {2, 4, 8, 12, 16}) {
      for (bool cold : {false, true}) {
        RegisterInt8("Int8PerChannel", shape, m, 0, cold, 0);
        RegisterInt8("Int8OneDnn", shape, m, 0, cold, 0, /*onednn_only=*/true);
      }
    }
    // Prefill.
    for (int64_t m : {16, 64, 512}) {
      for (int threads : {1, 2}) {
        for (int64_t group_size : {16, 32, 128}) {
          RegisterInt8("Int8Group" + std::to_string(group_size), shape, m, group_size, false,
                       threads);
        }
      }
      RegisterInt8("Int8PerChannel", shape, m, 0, false, 0);
      RegisterInt8("Int8PerRowPacked", shape, m, shape.k, false, 0);
    }
    for (int64_t m : kRowCounts) {
      const std::string suffix = ShapeName(shape) + "/m=" + std::to_string(m);
      benchmark::RegisterBenchmark(("F32/" + suffix).c_str(), BenchF32, shape, m, false)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
      if (m == 1) {
        benchmark::RegisterBenchmark(("F32/cold/" + suffix).c_str(), BenchF32, shape, m, true)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
      }
    }
  }
  for (int64_t m : {1, 2, 4, 5, 6, 7, 8, 16, 64, 512}) {
    benchmark::RegisterBenchmark(("Bf16LmHead/m=" + std::to_string(m)).c_str(), BenchBf16LmHead,
                                 m, /*allow_amx=*/true)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    if (AmxBf16Usable()) {
      benchmark::RegisterBenchmark(("Bf16LmHeadNoAmx/m=" + std::to_string(m)).c_str(),
                                   BenchBf16LmHead, m, /*allow_amx=*/false)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  for (int64_t m : {int64_t{1}, int64_t{512}}) {
    for (int64_t k : {int64_t{2048}, int64_t{8192}}) {
      const std::string suffix = "/m=" + std::to_string(m) + "/k=" + std::to_string(k);
      benchmark::RegisterBenchmark(("QuantizePerToken" + suffix).c_str(), BenchQuantize, m, k)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("RmsNormQuantize" + suffix).c_str(), BenchRmsNormQuantize,
                                   m, k)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("SiluMulQuantize" + suffix).c_str(), BenchSiluMulQuantize,
                                   m, k)
          ->UseRealTime();
    }
  }
}

}  // namespace
}  // namespace w8a8::kernels

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("isa", std::string(w8a8::kernels::IsaName(w8a8::kernels::ActiveIsa())));
  benchmark::AddCustomContext("amx_bf16", w8a8::kernels::AmxBf16Usable() ? "used" : "not used");
  benchmark::AddCustomContext("omp_threads", std::to_string(omp_get_max_threads()));
  w8a8::kernels::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

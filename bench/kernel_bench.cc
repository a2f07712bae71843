// Throughput of the kernels on the linear-layer shapes of Llama-3.2-1B (hidden 2048, KV
// projections 512, MLP 8192). Reports GOPS (2 * m * n * k operations per product) and GB/s
// (bytes of weights, activations and outputs touched once per product).
//
//   kernel_bench [--benchmark_filter=REGEX]     W8A8_ISA=avx2 lowers the ISA.
//
// The "cold" decode benchmarks cycle through copies of the weights that together exceed the
// last-level cache, as decoding a whole model does, so they measure DRAM bandwidth. The other
// benchmarks reuse one matrix that may stay in cache. ReadBandwidth is the baseline: a plain
// threaded sum over 1 GiB.
#include <omp.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/cpu_features.h"
#include "kernels/fused.h"
#include "kernels/gemm.h"

namespace w8a8::kernels {
namespace {

struct LayerShape {
  const char* name;
  int64_t n;
  int64_t k;
};

constexpr LayerShape kShapes[] = {
    {"attn_qo_2048x2048", 2048, 2048},
    {"attn_kv_512x2048", 512, 2048},
    {"mlp_up_8192x2048", 8192, 2048},
    {"mlp_down_2048x8192", 2048, 8192},
};
constexpr int64_t kRowCounts[] = {1, 16, 512};
// Bytes of weights the cold benchmarks cycle through: more than the last-level cache of
// current server CPUs.
constexpr int64_t kColdBytes = int64_t{1} << 30;

std::vector<int8_t> RandomInt8(int64_t count, uint32_t seed) {
  std::mt19937 engine(seed);
  std::uniform_int_distribution<int> distribution(-127, 127);
  std::vector<int8_t> values(count);
  for (int8_t& value : values) value = static_cast<int8_t>(distribution(engine));
  return values;
}

std::vector<float> RandomFloats(int64_t count, uint32_t seed) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> distribution(-1.0f, 1.0f);
  std::vector<float> values(count);
  for (float& value : values) value = distribution(engine);
  return values;
}

void SetCounters(benchmark::State& state, double operations, double bytes) {
  state.counters["GOPS"] = benchmark::Counter(operations * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Int8Matmul on one shape. group_size 0 is per-channel through oneDNN on AVX-512; group_size
// k is numerically the same per-channel product through the packed VNNI kernel.
void BenchInt8(benchmark::State& state, LayerShape shape, int64_t m, int64_t group_size,
               bool cold) {
  const int64_t n = shape.n, k = shape.k;
  const int64_t groups = group_size == 0 ? 1 : (k + group_size - 1) / group_size;
  const int64_t copies = cold ? std::max<int64_t>(1, kColdBytes / (n * k)) : 1;
  std::vector<std::unique_ptr<Int8Matmul>> matrices;
  for (int64_t copy = 0; copy < copies; ++copy) {
    const std::vector<int8_t> weights = RandomInt8(n * k, static_cast<uint32_t>(copy));
    const std::vector<float> scales(n * groups, 0.01f);
    auto matmul = Int8Matmul::Create(weights, n, k, scales, group_size);
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
  SetCounters(state, 2.0 * m * n * k, double(n * k + m * k + 4 * m * n + 4 * n * groups));
}

void BenchF32(benchmark::State& state, LayerShape shape, int64_t m, bool cold) {
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

void BenchReadBandwidth(benchmark::State& state) {
  const int64_t count = kColdBytes / 8;
  std::vector<int64_t> data(count, 1);
  for (auto _ : state) {
    int64_t sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (int64_t i = 0; i < count; ++i) sum += data[i];
    benchmark::DoNotOptimize(sum);
  }
  SetCounters(state, 0.0, double(kColdBytes));
}

void RegisterAll() {
  benchmark::RegisterBenchmark("ReadBandwidth/1GiB", BenchReadBandwidth)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (const LayerShape& shape : kShapes) {
    const std::string name = shape.name;
    for (int64_t m : kRowCounts) {
      const std::string suffix = name + "/m=" + std::to_string(m);
      const std::vector<std::pair<std::string, int64_t>> variants = {
          {"Int8PerChannel", 0}, {"Int8PerRowPacked", shape.k}, {"Int8Group128", 128}};
      for (const auto& [label, group_size] : variants) {
        benchmark::RegisterBenchmark((label + "/" + suffix).c_str(), BenchInt8, shape, m,
                                     group_size, false)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
        if (m == 1) {
          benchmark::RegisterBenchmark((label + "/cold/" + suffix).c_str(), BenchInt8, shape,
                                       m, group_size, true)
              ->Unit(benchmark::kMicrosecond)
              ->UseRealTime();
        }
      }
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
  benchmark::AddCustomContext("omp_threads", std::to_string(omp_get_max_threads()));
  w8a8::kernels::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "tools/bench_suites.h"

namespace w8a8::tools {
namespace {

struct LayerShape {
  const char* name;
  int64_t n;
  int64_t k;
};

// The linear layers of Llama-3.2-1B: q/o projections, k/v projections, gate/up and down.
constexpr LayerShape kShapes[] = {
    {"attn_qo", 2048, 2048},
    {"attn_kv", 512, 2048},
    {"mlp_gate_up", 8192, 2048},
    {"mlp_down", 2048, 8192},
};
constexpr int64_t kRowCounts[] = {1, 4, 16, 64, 512};
// Products with more rows than this get no bandwidth fraction, because they reuse each weight
// enough times that the weight stream is not expected to bound them.
constexpr int64_t kMaxBandwidthBoundRows = 16;

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

// Runs `product` once untimed, then until `seconds` have passed (at least once), and returns
// the fastest run in seconds.
template <typename Product>
double FastestRun(double seconds, Product product) {
  product();
  double fastest = 0.0;
  const double start = omp_get_wtime();
  for (int run = 0; run == 0 || omp_get_wtime() - start < seconds; ++run) {
    const double begin = omp_get_wtime();
    product();
    const double elapsed = omp_get_wtime() - begin;
    if (run == 0 || elapsed < fastest) fastest = elapsed;
  }
  return fastest;
}

nlohmann::json CaseJson(const std::string& kernel, const LayerShape& shape, int64_t m,
                        double run_seconds, double peak_gops, double weight_bytes,
                        const MachineCeilings& machine) {
  const double gops = 2.0 * m * shape.n * shape.k / run_seconds * 1e-9;
  nlohmann::json result = {{"kernel", kernel}, {"shape", shape.name}, {"n", shape.n},
                           {"k", shape.k},      {"m", m},              {"seconds", run_seconds},
                           {"gops", gops}};
  // Without the AVX-512 probes the ceilings are 0 and the fractions are left out.
  // NOTE: per-channel Int8Matmul goes through oneDNN for m > 1, which uses AMX tiles where the
  // CPU has them, so its fraction of the vpdpbusd peak can exceed 1.
  if (peak_gops > 0) result["peak_fraction"] = gops / peak_gops;
  if (m <= kMaxBandwidthBoundRows && machine.read_gbs.all_threads > 0) {
    // The time the weights alone take to stream at the measured bandwidth, over the run time.
    // NOTE: the weights are reused from run to run and may stay in cache, so this fraction can
    // exceed 1 for shapes that fit in the last-level cache.
    const double bound_seconds = weight_bytes / (machine.read_gbs.all_threads * 1e9);
    result["bandwidth_fraction"] = bound_seconds / run_seconds;
  }
  return result;
}

}  // namespace

absl::StatusOr<nlohmann::json> RunKernelSuite(const MachineCeilings& machine, double seconds) {
  nlohmann::json cases = nlohmann::json::array();
  for (const LayerShape& shape : kShapes) {
    const int64_t n = shape.n, k = shape.k;
    const std::vector<int8_t> weights = RandomInt8(n * k, 1);
    const std::vector<float> weights_f32 = RandomFloats(n * k, 2);
    struct Variant {
      std::string kernel;
      int64_t group_size;
      std::unique_ptr<kernels::Int8Matmul> matmul;
    };
    std::vector<Variant> variants;
    for (int64_t group_size : {int64_t{0}, int64_t{128}}) {
      const int64_t groups = group_size == 0 ? 1 : (k + group_size - 1) / group_size;
      const std::vector<float> scales(n * groups, 0.01f);
      absl::StatusOr<std::unique_ptr<kernels::Int8Matmul>> matmul =
          kernels::Int8Matmul::Create(weights, n, k, scales, group_size);
      if (!matmul.ok()) return matmul.status();
      variants.push_back({group_size == 0 ? "int8_per_channel" : "int8_per_group_128",
                          group_size, std::move(matmul).value()});
    }

    for (int64_t m : kRowCounts) {
      const std::vector<int8_t> xq = RandomInt8(m * k, 3);
      const std::vector<float> x_scales(m, 0.02f);
      const std::vector<float> x = RandomFloats(m * k, 4);
      std::vector<float> y(m * n);
      for (const Variant& variant : variants) {
        const double run_seconds = FastestRun(
            seconds, [&] { variant.matmul->Run(xq.data(), x_scales.data(), m, y.data()); });
        const int64_t groups =
            variant.group_size == 0 ? 1 : (k + variant.group_size - 1) / variant.group_size;
        const double weight_bytes = static_cast<double>(n * k + 4 * n * groups);
        cases.push_back(CaseJson(variant.kernel, shape, m, run_seconds,
                                 machine.int8_gops.all_threads, weight_bytes, machine));
      }
      const double run_seconds = FastestRun(seconds, [&] {
        kernels::GemmF32(x.data(), weights_f32.data(), y.data(), m, n, k);
      });
      cases.push_back(CaseJson("fp32", shape, m, run_seconds, machine.fp32_gflops.all_threads,
                               4.0 * n * k, machine));
    }
  }
  return cases;
}

}  // namespace w8a8::tools

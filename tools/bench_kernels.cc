#include <algorithm>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "tools/bench_common.h"
#include "tools/bench_suites.h"

namespace w8a8::tools {
namespace {

constexpr int64_t kRowCounts[] = {1, 4, 16, 64, 512};
constexpr int kRowCountCount = sizeof(kRowCounts) / sizeof(kRowCounts[0]);
// Products with more rows than this get no bandwidth fraction, because they reuse each weight
// enough times that the weight stream is not expected to bound them.
constexpr int64_t kMaxBandwidthBoundRows = 16;
// At --seconds below this the kernels cycle through only kQuickRotationBytes of each matrix,
// so that quick runs (such as the test's) stay quick. Their figures are then marked as
// possibly cache-resident.
constexpr double kFullRotationSeconds = 0.25;
constexpr int64_t kQuickRotationBytes = int64_t{64} << 20;

// Bytes of weights that each kernel cycles through for `seconds` per case.
int64_t RotationBytes(double seconds) {
  return seconds >= kFullRotationSeconds ? DramResidentBytes() : kQuickRotationBytes;
}

// Copies of a matrix of `matrix_bytes` needed to cycle through at least `rotation_bytes`.
int64_t CopiesFor(int64_t rotation_bytes, int64_t matrix_bytes) {
  return std::max<int64_t>(1, (rotation_bytes + matrix_bytes - 1) / matrix_bytes);
}

// One kernel on one shape: copies of the same weights at distinct addresses, which the timed
// runs cycle through so that consecutive products do not find the weights in cache.
struct RotatedKernel {
  std::string name;
  double peak_gops = 0.0;      // The ceiling of the peak fraction.
  int64_t bytes_read = 0;      // Weight and scale bytes one product reads.
  int64_t copies = 0;
  // Whether each copy prepares state on its first product at a new m, so that every copy runs
  // once untimed before timing. oneDNN's Int8Matmul creates a primitive per m and per copy.
  bool warm_every_copy = false;
  // Runs one product with copy `copy` on the m x k input, writing the m x n output.
  std::function<void(int64_t copy, int64_t m)> run;
};

// Runs `kernel` once untimed (every copy once with warm_every_copy), then cycles through its
// copies for at least `seconds`, and returns the fastest product in seconds.
double FastestRotatedRun(const RotatedKernel& kernel, int64_t m, double seconds) {
  int64_t next = 0;
  auto product = [&] {
    kernel.run(next, m);
    next = next + 1 == kernel.copies ? 0 : next + 1;
  };
  const int64_t warm_runs = kernel.warm_every_copy ? kernel.copies : 1;
  for (int64_t run = 0; run < warm_runs; ++run) product();
  return FastestRun(seconds, 1, product);
}

nlohmann::json CaseJson(const RotatedKernel& kernel, const LinearShape& shape, int64_t m,
                        double run_seconds, const MachineCeilings& machine) {
  const double gops = 2.0 * m * shape.n * shape.k / run_seconds * 1e-9;
  const int64_t rotation_bytes = kernel.copies * kernel.bytes_read;
  nlohmann::json result = {{"kernel", kernel.name},
                           {"shape", shape.name},
                           {"n", shape.n},
                           {"k", shape.k},
                           {"m", m},
                           {"seconds", run_seconds},
                           {"gops", gops},
                           {"weight_bytes", kernel.bytes_read},
                           {"weight_copies", kernel.copies},
                           {"rotation_bytes", rotation_bytes},
                           {"dram_resident", ReadsDram(rotation_bytes)}};
  // Without the AVX-512 probes the ceilings are 0 and the fractions are left out.
  // NOTE: per-channel Int8Matmul goes through oneDNN for m > 4 with AMX (m > 16 without),
  // and only on AMX tiles can its fraction of the vpdpbusd peak exceed 1.
  if (kernel.peak_gops > 0) result["peak_fraction"] = gops / kernel.peak_gops;
  if (m <= kMaxBandwidthBoundRows && machine.read_gbs.all_threads > 0) {
    // The time the weights alone take to stream at the measured bandwidth, over the run time.
    // Above 1 means that part of the weights came from cache: see "dram_resident".
    const double bound_seconds =
        static_cast<double>(kernel.bytes_read) / (machine.read_gbs.all_threads * 1e9);
    result["bandwidth_fraction"] = bound_seconds / run_seconds;
  }
  return result;
}

// Inputs of one row count, shared by every kernel of a shape.
struct Inputs {
  std::vector<int8_t> xq;
  std::vector<float> x_scales;
  std::vector<float> x;
  std::vector<float> y;
};

// Inputs for every row count of `shape`, in the order of kRowCounts.
std::vector<Inputs> MakeInputs(const LinearShape& shape) {
  std::vector<Inputs> inputs(kRowCountCount);
  for (int row = 0; row < kRowCountCount; ++row) {
    const int64_t m = kRowCounts[row];
    inputs[row] = {RandomInt8(m * shape.k, 3), std::vector<float>(m, 0.02f),
                   RandomFloats(m * shape.k, 4), std::vector<float>(m * shape.n)};
  }
  return inputs;
}

// Times `kernel` at every row count and appends one case per row count to `results[row]`.
void MeasureRowCounts(const RotatedKernel& kernel, const LinearShape& shape,
                      const MachineCeilings& machine, double seconds,
                      std::vector<std::vector<nlohmann::json>>& results) {
  for (int row = 0; row < kRowCountCount; ++row) {
    const int64_t m = kRowCounts[row];
    results[row].push_back(
        CaseJson(kernel, shape, m, FastestRotatedRun(kernel, m, seconds), machine));
  }
}

}  // namespace

absl::StatusOr<nlohmann::json> RunKernelSuite(const MachineCeilings& machine, double seconds) {
  const int64_t rotation_bytes = RotationBytes(seconds);
  nlohmann::json cases = nlohmann::json::array();
  for (const LinearShape& shape : kLlama32OneBShapes) {
    const int64_t n = shape.n, k = shape.k;
    std::vector<Inputs> inputs = MakeInputs(shape);
    auto input_for = [&](int64_t m) -> Inputs& {
      const int64_t* found = std::find(std::begin(kRowCounts), std::end(kRowCounts), m);
      return inputs[found - std::begin(kRowCounts)];
    };
    // results[row][kernel], printed as shape, then row count, then kernel.
    std::vector<std::vector<nlohmann::json>> results(kRowCountCount);

    // The kernels are built and measured one at a time, so that only one set of copies is in
    // memory at once.
    const std::vector<int8_t> weights_int8 = RandomInt8(n * k, 1);
    for (int64_t group_size : {int64_t{0}, int64_t{128}}) {
      const int64_t groups = group_size == 0 ? 1 : (k + group_size - 1) / group_size;
      const std::vector<float> scales(n * groups, 0.01f);
      RotatedKernel kernel;
      kernel.name = group_size == 0 ? "int8_per_channel" : "int8_per_group_128";
      kernel.peak_gops = machine.int8_gops.all_threads;
      kernel.bytes_read = n * k + static_cast<int64_t>(sizeof(float)) * n * groups;
      kernel.copies = CopiesFor(rotation_bytes, kernel.bytes_read);
      kernel.warm_every_copy = group_size == 0;
      std::vector<std::unique_ptr<kernels::Int8Matmul>> copies;
      for (int64_t copy = 0; copy < kernel.copies; ++copy) {
        absl::StatusOr<std::unique_ptr<kernels::Int8Matmul>> matmul =
            kernels::Int8Matmul::Create(weights_int8, n, k, scales, group_size);
        if (!matmul.ok()) return matmul.status();
        copies.push_back(std::move(matmul).value());
      }
      kernel.run = [&](int64_t copy, int64_t m) {
        Inputs& in = input_for(m);
        copies[copy]->Run(in.xq.data(), in.x_scales.data(), m, in.y.data());
      };
      MeasureRowCounts(kernel, shape, machine, seconds, results);
    }

    {
      const std::vector<float> weights = RandomFloats(n * k, 2);
      RotatedKernel kernel;
      kernel.name = "fp32";
      kernel.peak_gops = machine.fp32_gflops.all_threads;
      kernel.bytes_read = static_cast<int64_t>(sizeof(float)) * n * k;
      kernel.copies = CopiesFor(rotation_bytes, kernel.bytes_read);
      const std::vector<std::vector<float>> copies(kernel.copies, weights);
      kernel.run = [&](int64_t copy, int64_t m) {
        Inputs& in = input_for(m);
        kernels::GemmF32(in.x.data(), copies[copy].data(), in.y.data(), m, n, k);
      };
      MeasureRowCounts(kernel, shape, machine, seconds, results);
    }

    for (std::vector<nlohmann::json>& row : results) {
      for (nlohmann::json& entry : row) cases.push_back(std::move(entry));
    }
  }
  return cases;
}

}  // namespace w8a8::tools

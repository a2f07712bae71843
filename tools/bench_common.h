// Layer shapes, random inputs and the fastest-run timing loop shared by `w8a8 bench` (tools/)
// and kernel_bench (bench/). Header-only, because bench/ links only w8a8_kernels and not the
// sources of the w8a8 tool. The functions are thread-safe and keep no state.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

namespace w8a8::tools {

// The shape of a linear layer's weight matrix: n outputs by k inputs.
struct LinearShape {
  const char* name;
  int64_t n;
  int64_t k;
};

// The linear layers of Llama-3.2-1B: q/o projections, k/v projections, gate/up and down.
inline constexpr LinearShape kLlama32OneBShapes[] = {
    {"attn_qo", 2048, 2048},
    {"attn_kv", 512, 2048},
    {"mlp_gate_up", 8192, 2048},
    {"mlp_down", 2048, 8192},
};

// `count` int8 values drawn uniformly from [-127, 127] by an mt19937 seeded with `seed`.
inline std::vector<int8_t> RandomInt8(int64_t count, uint32_t seed) {
  std::mt19937 engine(seed);
  std::uniform_int_distribution<int> distribution(-127, 127);
  std::vector<int8_t> values(count);
  for (int8_t& value : values) value = static_cast<int8_t>(distribution(engine));
  return values;
}

// `count` floats drawn uniformly from [-1, 1) by an mt19937 seeded with `seed`.
inline std::vector<float> RandomFloats(int64_t count, uint32_t seed) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> distribution(-1.0f, 1.0f);
  std::vector<float> values(count);
  for (float& value : values) value = distribution(engine);
  return values;
}

// Returns the median of `values`, the mean of the middle two for an even count. `values` must
// not be empty.
inline double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t half = values.size() / 2;
  return values.size() % 2 == 1 ? values[half] : (values[half - 1] + values[half]) / 2.0;
}

// Seconds that one call of `run` takes on the steady clock.
template <typename Run>
double TimeOnce(Run&& run) {
  const auto begin = std::chrono::steady_clock::now();
  run();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
}

// Calls `run` at least `min_runs` times and until `seconds` have passed, and returns the
// fastest call in seconds. On a shared machine the fastest call is the one least disturbed by
// other processes. Blocks for the whole measurement.
template <typename Run>
double FastestRun(double seconds, int min_runs, Run&& run) {
  double fastest = 0.0;
  const auto start = std::chrono::steady_clock::now();
  for (int done = 0;; ++done) {
    const double elapsed_total =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (done >= min_runs && done >= 1 && elapsed_total >= seconds) break;
    const double elapsed = TimeOnce(run);
    if (done == 0 || elapsed < fastest) fastest = elapsed;
  }
  return fastest;
}

}  // namespace w8a8::tools

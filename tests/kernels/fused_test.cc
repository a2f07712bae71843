#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_features.h"
#include "kernels/fused.h"
#include "kernels/gemm.h"
#include "kernels/reference.h"

namespace w8a8::kernels {
namespace {

std::vector<float> Normal(int64_t count, float stddev, uint32_t seed) {
  std::mt19937 engine(seed);
  std::normal_distribution<float> distribution(0.0f, stddev);
  std::vector<float> values(count);
  for (float& value : values) value = distribution(engine);
  return values;
}

std::string Describe(Isa isa, int64_t m, int64_t k) {
  return std::string(IsaName(isa)) + " m=" + std::to_string(m) + " k=" + std::to_string(k);
}

// Checks a fused result against the reference: float outputs within `relative` of the
// reference (relative to the row's max |value|, plus 1e-30), scales within `relative`, q
// within 1 of the reference q, and q exactly the per-token quantization of the kernel's own
// float output, which shows the fusion itself adds no error.
void ExpectCloseToReference(Isa isa, int64_t m, int64_t k, const std::vector<float>& values,
                            const std::vector<float>& expected_values,
                            const std::vector<int8_t>& q, const std::vector<int8_t>& expected_q,
                            const std::vector<float>& scales,
                            const std::vector<float>& expected_scales, double relative) {
  const std::string context = Describe(isa, m, k);
  for (int64_t row = 0; row < m; ++row) {
    ASSERT_NEAR(scales[row], expected_scales[row], relative * expected_scales[row])
        << context << " row " << row;
    const double tolerance = relative * expected_scales[row] * 127.0 + 1e-30;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t at = row * k + i;
      ASSERT_NEAR(values[at], expected_values[at], tolerance) << context << " at " << at;
      ASSERT_LE(std::abs(int{q[at]} - int{expected_q[at]}), 1) << context << " at " << at;
    }
  }
  std::vector<int8_t> requantized(m * k);
  std::vector<float> requantized_scales(m);
  reference::QuantizePerToken(values.data(), m, k, requantized.data(),
                              requantized_scales.data());
  EXPECT_EQ(q, requantized) << context;
  EXPECT_EQ(scales, requantized_scales) << context;
}

TEST(RmsNormQuantize, MatchesReference) {
  uint32_t seed = 1;
  for (int64_t m : {1, 2, 7, 64}) {
    for (int64_t k : {1, 3, 17, 172, 1000, 2048}) {
      const std::vector<float> x = Normal(m * k, 3.0f, seed++);
      const std::vector<float> weight = Normal(k, 1.0f, seed++);
      std::vector<float> expected_y(m * k);
      std::vector<int8_t> expected_q(m * k);
      std::vector<float> expected_scales(m);
      reference::RmsNormQuantize(x.data(), weight.data(), 1e-5f, m, k, expected_q.data(),
                                 expected_scales.data(), expected_y.data());
      for (Isa isa : SupportedIsas()) {
        std::vector<float> y(m * k, std::nanf(""));
        std::vector<int8_t> q(m * k, 99);
        std::vector<float> scales(m, -1.0f);
        RmsNormQuantize(isa, x.data(), weight.data(), 1e-5f, m, k, q.data(), scales.data(),
                        y.data());
        // The FP64 sums of squares differ only in order, so 1 / rms and y differ by at most
        // a few units in the last place.
        ExpectCloseToReference(isa, m, k, y, expected_y, q, expected_q, scales,
                               expected_scales, 1e-6);
      }
    }
  }
}

TEST(RmsNormQuantize, SameResultWithoutFloatOutput) {
  const int64_t m = 5, k = 300;
  const std::vector<float> x = Normal(m * k, 1.0f, 3);
  const std::vector<float> weight = Normal(k, 1.0f, 4);
  for (Isa isa : SupportedIsas()) {
    std::vector<float> y(m * k);
    std::vector<int8_t> q_with(m * k);
    std::vector<int8_t> q_without(m * k);
    std::vector<float> scales_with(m);
    std::vector<float> scales_without(m);
    RmsNormQuantize(isa, x.data(), weight.data(), 1e-6f, m, k, q_with.data(),
                    scales_with.data(), y.data());
    RmsNormQuantize(isa, x.data(), weight.data(), 1e-6f, m, k, q_without.data(),
                    scales_without.data());
    EXPECT_EQ(q_with, q_without) << IsaName(isa);
    EXPECT_EQ(scales_with, scales_without) << IsaName(isa);
  }
}

TEST(RmsNormQuantize, ZeroRowGivesZeros) {
  const int64_t k = 33;
  const std::vector<float> x(k, 0.0f);
  const std::vector<float> weight(k, 2.0f);
  for (Isa isa : SupportedIsas()) {
    std::vector<float> y(k, 1.0f);
    std::vector<int8_t> q(k, 99);
    float scale = 0.0f;
    RmsNormQuantize(isa, x.data(), weight.data(), 1e-5f, 1, k, q.data(), &scale, y.data());
    EXPECT_EQ(scale, 1.0f) << IsaName(isa);
    EXPECT_EQ(q, std::vector<int8_t>(k, 0)) << IsaName(isa);
    EXPECT_EQ(y, std::vector<float>(k, 0.0f)) << IsaName(isa);
  }
}

TEST(RmsNormQuantize, NormalizesToUnitRms) {
  // x = [3, 4] has mean square 12.5, so with eps 0 and unit weights y = x / sqrt(12.5).
  const std::vector<float> x = {3.0f, 4.0f};
  const std::vector<float> weight = {1.0f, 1.0f};
  for (Isa isa : SupportedIsas()) {
    std::vector<float> y(2);
    std::vector<int8_t> q(2);
    float scale = 0.0f;
    RmsNormQuantize(isa, x.data(), weight.data(), 0.0f, 1, 2, q.data(), &scale, y.data());
    EXPECT_NEAR(y[0], 3.0 / std::sqrt(12.5), 1e-6) << IsaName(isa);
    EXPECT_NEAR(y[1], 4.0 / std::sqrt(12.5), 1e-6) << IsaName(isa);
    EXPECT_EQ(q[1], 127) << IsaName(isa);
    EXPECT_EQ(q[0], 95) << IsaName(isa);  // round(127 * 3 / 4) = round(95.25).
  }
}

TEST(SiluMulQuantize, MatchesReference) {
  uint32_t seed = 500;
  for (int64_t m : {1, 2, 7, 64}) {
    for (int64_t k : {1, 3, 17, 172, 1000, 8192}) {
      // Gate values from about -20 to 20 reach both flat ends of silu.
      const std::vector<float> gate = Normal(m * k, 5.0f, seed++);
      const std::vector<float> up = Normal(m * k, 2.0f, seed++);
      std::vector<float> expected_h(m * k);
      std::vector<int8_t> expected_q(m * k);
      std::vector<float> expected_scales(m);
      reference::SiluMulQuantize(gate.data(), up.data(), m, k, expected_q.data(),
                                 expected_scales.data(), expected_h.data());
      for (Isa isa : SupportedIsas()) {
        std::vector<float> h(m * k, std::nanf(""));
        std::vector<int8_t> q(m * k, 99);
        std::vector<float> scales(m, -1.0f);
        SiluMulQuantize(isa, gate.data(), up.data(), m, k, q.data(), scales.data(), h.data());
        // The polynomial exp is within a few units in the last place of std::exp.
        ExpectCloseToReference(isa, m, k, h, expected_h, q, expected_q, scales,
                               expected_scales, 2e-6);
      }
    }
  }
}

TEST(SiluMulQuantize, SaturatesForLargeGates) {
  // silu(g) tends to g for large g and to 0 (from below) for very negative g.
  const std::vector<float> gate = {100.0f, -100.0f, 30.0f, -30.0f, 0.0f, 1.0f};
  const std::vector<float> up(6, 1.0f);
  for (Isa isa : SupportedIsas()) {
    std::vector<float> h(6);
    std::vector<int8_t> q(6);
    float scale = 0.0f;
    SiluMulQuantize(isa, gate.data(), up.data(), 1, 6, q.data(), &scale, h.data());
    EXPECT_FLOAT_EQ(h[0], 100.0f) << IsaName(isa);
    EXPECT_NEAR(h[1], 0.0f, 1e-30) << IsaName(isa);
    EXPECT_FLOAT_EQ(h[2], 30.0f) << IsaName(isa);
    EXPECT_NEAR(h[3], -30.0f * std::exp(-30.0f), 1e-16) << IsaName(isa);
    EXPECT_EQ(h[4], 0.0f) << IsaName(isa);
    EXPECT_NEAR(h[5], 1.0f / (1.0f + std::exp(-1.0f)), 1e-7) << IsaName(isa);
    EXPECT_EQ(q[0], 127) << IsaName(isa);
    EXPECT_FLOAT_EQ(scale, 100.0f / 127.0f) << IsaName(isa);
  }
}

TEST(SiluMulQuantize, SameResultWithoutFloatOutput) {
  const int64_t m = 3, k = 500;
  const std::vector<float> gate = Normal(m * k, 3.0f, 8);
  const std::vector<float> up = Normal(m * k, 1.0f, 9);
  for (Isa isa : SupportedIsas()) {
    std::vector<float> h(m * k);
    std::vector<int8_t> q_with(m * k);
    std::vector<int8_t> q_without(m * k);
    std::vector<float> scales_with(m);
    std::vector<float> scales_without(m);
    SiluMulQuantize(isa, gate.data(), up.data(), m, k, q_with.data(), scales_with.data(),
                    h.data());
    SiluMulQuantize(isa, gate.data(), up.data(), m, k, q_without.data(), scales_without.data());
    EXPECT_EQ(q_with, q_without) << IsaName(isa);
    EXPECT_EQ(scales_with, scales_without) << IsaName(isa);
  }
}

}  // namespace
}  // namespace w8a8::kernels

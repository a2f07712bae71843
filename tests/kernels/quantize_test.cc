#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_features.h"
#include "kernels/gemm.h"
#include "kernels/reference.h"

namespace w8a8::kernels {
namespace {

// Rows of very different magnitude, from 1e-3 to 1e3, as activations of real layers have.
std::vector<float> RandomRows(int64_t m, int64_t k, uint32_t seed) {
  std::mt19937 engine(seed);
  std::normal_distribution<float> distribution(0.0f, 1.0f);
  std::vector<float> values(m * k);
  for (int64_t row = 0; row < m; ++row) {
    const float magnitude = std::pow(10.0f, static_cast<float>(row % 7) - 3.0f);
    for (int64_t i = 0; i < k; ++i) values[row * k + i] = magnitude * distribution(engine);
  }
  return values;
}

std::string Describe(Isa isa, int64_t m, int64_t k) {
  return std::string(IsaName(isa)) + " m=" + std::to_string(m) + " k=" + std::to_string(k);
}

TEST(QuantizePerToken, MatchesReferenceBitForBit) {
  uint32_t seed = 1;
  for (int64_t m : {1, 2, 7, 64}) {
    for (int64_t k : {1, 3, 17, 172, 1000, 4096}) {
      const std::vector<float> x = RandomRows(m, k, seed++);
      std::vector<int8_t> expected_q(m * k);
      std::vector<float> expected_scales(m);
      reference::QuantizePerToken(x.data(), m, k, expected_q.data(), expected_scales.data());
      for (Isa isa : SupportedIsas()) {
        std::vector<int8_t> q(m * k, 99);
        std::vector<float> scales(m, -1.0f);
        QuantizePerToken(isa, x.data(), m, k, q.data(), scales.data());
        EXPECT_EQ(scales, expected_scales) << Describe(isa, m, k);
        EXPECT_EQ(q, expected_q) << Describe(isa, m, k);
      }
    }
  }
}

TEST(QuantizePerTensor, MatchesReferenceBitForBit) {
  uint32_t seed = 100;
  // 64 x 2048 has enough elements for the threads to split the rows.
  for (int64_t m : {1, 2, 7, 64}) {
    for (int64_t k : {1, 3, 17, 172, 1000, 2048}) {
      const std::vector<float> x = RandomRows(m, k, seed++);
      std::vector<int8_t> expected_q(m * k);
      float expected_scale = 0.0f;
      reference::QuantizePerTensor(x.data(), m, k, expected_q.data(), &expected_scale);
      for (Isa isa : SupportedIsas()) {
        std::vector<int8_t> q(m * k, 99);
        float scale = -1.0f;
        QuantizePerTensor(isa, x.data(), m, k, q.data(), &scale);
        EXPECT_EQ(scale, expected_scale) << Describe(isa, m, k);
        EXPECT_EQ(q, expected_q) << Describe(isa, m, k);
      }
    }
  }
}

TEST(QuantizePerToken, RoundTripWithinHalfStep) {
  const int64_t m = 7, k = 1000;
  const std::vector<float> x = RandomRows(m, k, 7);
  for (Isa isa : SupportedIsas()) {
    std::vector<int8_t> q(m * k);
    std::vector<float> scales(m);
    QuantizePerToken(isa, x.data(), m, k, q.data(), scales.data());
    for (int64_t row = 0; row < m; ++row) {
      float max_abs = 0.0f;
      for (int64_t i = 0; i < k; ++i) max_abs = std::max(max_abs, std::fabs(x[row * k + i]));
      ASSERT_FLOAT_EQ(scales[row], max_abs / 127.0f) << Describe(isa, m, k) << " row " << row;
      for (int64_t i = 0; i < k; ++i) {
        const float restored = static_cast<float>(q[row * k + i]) * scales[row];
        // Half a step, plus the rounding of x * (1 / scale) and of the product.
        ASSERT_LE(std::fabs(restored - x[row * k + i]), scales[row] * (0.5f + 1e-5f))
            << Describe(isa, m, k) << " row " << row << " column " << i;
      }
    }
  }
}

TEST(QuantizePerToken, ZeroRowGetsUnitScale) {
  const int64_t m = 3, k = 37;
  std::vector<float> x = RandomRows(m, k, 9);
  std::fill(x.begin() + k, x.begin() + 2 * k, 0.0f);
  for (Isa isa : SupportedIsas()) {
    std::vector<int8_t> q(m * k, 99);
    std::vector<float> scales(m);
    QuantizePerToken(isa, x.data(), m, k, q.data(), scales.data());
    EXPECT_EQ(scales[1], 1.0f) << IsaName(isa);
    EXPECT_EQ(std::vector<int8_t>(q.begin() + k, q.begin() + 2 * k), std::vector<int8_t>(k, 0))
        << IsaName(isa);
    EXPECT_NE(scales[0], 1.0f) << IsaName(isa);
  }
}

TEST(QuantizePerToken, TinyRowQuantizesToZeros) {
  // For max |x| = 1e-37, 1 / (max / 127) would overflow FP32 to infinity.
  std::vector<float> x(20, 0.0f);
  x[3] = 1e-37f;
  x[19] = -5e-38f;
  for (Isa isa : SupportedIsas()) {
    std::vector<int8_t> q(20, 99);
    float scale = 0.0f;
    QuantizePerToken(isa, x.data(), 1, 20, q.data(), &scale);
    EXPECT_EQ(scale, 1.0f) << IsaName(isa);
    EXPECT_EQ(q, std::vector<int8_t>(20, 0)) << IsaName(isa);
  }
}

TEST(QuantizePerTensor, ZeroMatrixGetsUnitScale) {
  const std::vector<float> x(2 * 20, 0.0f);
  for (Isa isa : SupportedIsas()) {
    std::vector<int8_t> q(x.size(), 99);
    float scale = 0.0f;
    QuantizePerTensor(isa, x.data(), 2, 20, q.data(), &scale);
    EXPECT_EQ(scale, 1.0f) << IsaName(isa);
    EXPECT_EQ(q, std::vector<int8_t>(x.size(), 0)) << IsaName(isa);
  }
}

TEST(QuantizePerToken, ExtremesMapToPlusMinus127) {
  // The row max and its negation give exactly +-127, never -128, at any magnitude, also in
  // the masked or scalar tail (k = 35 leaves a tail of 3 after 16- and 8-wide steps).
  for (float magnitude : {1e-30f, 1.0f, 3.0e38f}) {
    std::vector<float> x(35, 0.0f);
    x[0] = magnitude;
    x[1] = -magnitude;
    x[33] = -magnitude;
    x[34] = magnitude;
    for (Isa isa : SupportedIsas()) {
      std::vector<int8_t> q(35);
      float scale = 0.0f;
      QuantizePerToken(isa, x.data(), 1, 35, q.data(), &scale);
      EXPECT_EQ(q[0], 127) << IsaName(isa) << " magnitude " << magnitude;
      EXPECT_EQ(q[1], -127) << IsaName(isa) << " magnitude " << magnitude;
      EXPECT_EQ(q[33], -127) << IsaName(isa) << " magnitude " << magnitude;
      EXPECT_EQ(q[34], 127) << IsaName(isa) << " magnitude " << magnitude;
    }
  }
}

TEST(QuantizePerToken, RoundsHalfToEven) {
  // max |x| = 127 gives scale 1, so x * (1 / scale) is x itself and ties are exact. The 40
  // values cover full SIMD steps and the tail.
  std::vector<float> x(40);
  std::vector<int8_t> expected(40);
  const float ties[] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f};
  const int8_t rounded[] = {0, 2, 2, 0, -2, -2, 126, -126};
  for (int i = 0; i < 40; ++i) {
    x[i] = ties[i % 8];
    expected[i] = rounded[i % 8];
  }
  x[39] = 127.0f;
  expected[39] = 127;
  for (Isa isa : SupportedIsas()) {
    std::vector<int8_t> q(40);
    float scale = 0.0f;
    QuantizePerToken(isa, x.data(), 1, 40, q.data(), &scale);
    EXPECT_EQ(scale, 1.0f) << IsaName(isa);
    EXPECT_EQ(q, expected) << IsaName(isa);
  }
}

TEST(QuantizePerToken, ActiveIsaOverloadMatches) {
  const std::vector<float> x = RandomRows(5, 300, 3);
  std::vector<int8_t> q_active(x.size());
  std::vector<int8_t> q_explicit(x.size());
  std::vector<float> scales_active(5);
  std::vector<float> scales_explicit(5);
  QuantizePerToken(x.data(), 5, 300, q_active.data(), scales_active.data());
  QuantizePerToken(ActiveIsa(), x.data(), 5, 300, q_explicit.data(), scales_explicit.data());
  EXPECT_EQ(q_active, q_explicit);
  EXPECT_EQ(scales_active, scales_explicit);
}

}  // namespace
}  // namespace w8a8::kernels

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_features.h"
#include "kernels/gemm.h"
#include "kernels/reference.h"

namespace w8a8::kernels {
namespace {

std::vector<float> RandomFloats(int64_t count, uint32_t seed) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> distribution(-1.0f, 1.0f);
  std::vector<float> values(count);
  for (float& value : values) value = distribution(engine);
  return values;
}

// Any order of summing k FP32 products lies within gamma_k * sum|x_i w_i| of the exact dot
// product, with gamma_k = k u / (1 - k u) and u = 2^-24 (the standard forward error bound of
// floating-point summation). Two such sums therefore differ by at most twice that.
double SummationBound(const float* x, const float* w, int64_t k) {
  double magnitude = 0.0;
  for (int64_t i = 0; i < k; ++i) magnitude += std::fabs(double{x[i]} * double{w[i]});
  const double u = std::ldexp(1.0, -24);
  const double gamma = static_cast<double>(k) * u / (1.0 - static_cast<double>(k) * u);
  return 2.0 * gamma * magnitude + 1e-30;
}

struct Shape {
  int64_t m;
  int64_t n;
  int64_t k;
};

void ExpectMatchesReference(const Shape& shape, uint32_t seed) {
  const auto [m, n, k] = shape;
  const std::vector<float> x = RandomFloats(m * k, seed);
  const std::vector<float> w = RandomFloats(n * k, seed + 1);
  std::vector<float> expected(m * n);
  reference::GemmF32(x.data(), w.data(), expected.data(), m, n, k);
  for (Isa isa : SupportedIsas()) {
    std::vector<float> actual(m * n, std::nanf(""));
    GemmF32(isa, x.data(), w.data(), actual.data(), m, n, k);
    for (int64_t row = 0; row < m; ++row) {
      for (int64_t col = 0; col < n; ++col) {
        const double bound = SummationBound(&x[row * k], &w[col * k], k);
        ASSERT_NEAR(actual[row * n + col], expected[row * n + col], bound)
            << IsaName(isa) << " m=" << m << " n=" << n << " k=" << k << " at row " << row
            << ", column " << col;
      }
    }
  }
}

TEST(GemmF32, MatchesReferenceOnOddShapes) {
  uint32_t seed = 1;
  for (int64_t m : {1, 2, 7, 64}) {
    for (int64_t n : {1, 5, 130}) {
      for (int64_t k : {1, 3, 17, 172, 1000}) {
        ExpectMatchesReference({m, n, k}, seed++);
      }
    }
  }
}

TEST(GemmF32, MatchesReferenceOnLlamaShapes) {
  ExpectMatchesReference({1, 512, 2048}, 7);
  ExpectMatchesReference({1, 64, 8192}, 10);
  ExpectMatchesReference({3, 256, 2048}, 8);
  ExpectMatchesReference({33, 96, 512}, 9);
}

TEST(GemmF32, ComputesSmallProductExactly) {
  // x = [[1, 2], [3, 4]] and w = [[5, 6], [7, 8], [9, 10]], so every product and sum is exact.
  const std::vector<float> x = {1, 2, 3, 4};
  const std::vector<float> w = {5, 6, 7, 8, 9, 10};
  for (Isa isa : SupportedIsas()) {
    std::vector<float> y(6);
    GemmF32(isa, x.data(), w.data(), y.data(), 2, 3, 2);
    EXPECT_EQ(y, (std::vector<float>{17, 23, 29, 39, 53, 67})) << IsaName(isa);
    std::vector<float> first_row(3);
    GemmF32(isa, x.data(), w.data(), first_row.data(), 1, 3, 2);
    EXPECT_EQ(first_row, (std::vector<float>{17, 23, 29})) << IsaName(isa);
  }
}

TEST(GemmF32, WritesZerosWhenKIsZero) {
  for (Isa isa : SupportedIsas()) {
    for (int64_t m : {1, 2}) {
      std::vector<float> y(m * 3, 1.0f);
      GemmF32(isa, nullptr, nullptr, y.data(), m, 3, 0);
      EXPECT_EQ(y, std::vector<float>(m * 3, 0.0f)) << IsaName(isa) << " m=" << m;
    }
  }
}

TEST(GemmF32, ActiveIsaOverloadMatches) {
  const std::vector<float> x = RandomFloats(3 * 40, 3);
  const std::vector<float> w = RandomFloats(7 * 40, 4);
  std::vector<float> active(3 * 7);
  std::vector<float> explicit_isa(3 * 7);
  GemmF32(x.data(), w.data(), active.data(), 3, 7, 40);
  GemmF32(ActiveIsa(), x.data(), w.data(), explicit_isa.data(), 3, 7, 40);
  EXPECT_EQ(active, explicit_isa);
}

}  // namespace
}  // namespace w8a8::kernels

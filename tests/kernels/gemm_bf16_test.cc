#include "kernels/gemm_bf16.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_features.h"

namespace w8a8::kernels {
namespace {

uint16_t ToBf16Truncated(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<uint16_t>(bits >> 16);
}

double Bf16AsDouble(uint16_t value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float result;
  std::memcpy(&result, &bits, sizeof(result));
  return result;
}

TEST(GemmBf16Test, ConversionIsExact) {
  const std::vector<float> values = {0.0f,   -0.0f,    1.0f,     -2.5f,    3.140625f,  1e-30f,
                                     -7e20f, INFINITY, 65504.0f, 0.15625f, -1.0f / 64, 1e38f,
                                     3.0f,   -4.0f,    5.0f,     6.0f,     7.0f,       8.0f};
  std::vector<uint16_t> bf16;
  for (float value : values) bf16.push_back(ToBf16Truncated(value));
  std::vector<float> out(values.size(), -1.0f);
  Bf16ToFloat(bf16.data(), static_cast<int64_t>(bf16.size()), out.data());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(out[i], static_cast<float>(Bf16AsDouble(bf16[i]))) << "value " << values[i];
  }
  // These values have at most 8 significant bits, so BF16 keeps them unchanged.
  EXPECT_EQ(out[2], 1.0f);
  EXPECT_EQ(out[3], -2.5f);
  EXPECT_EQ(out[4], 3.140625f);
}

TEST(GemmBf16Test, EveryIsaMatchesDoublePrecision) {
  struct Shape {
    int64_t m, n, k;
  };
  // m <= 16 runs in registers, up to 4 rows of x per pass over tiles of 8 (m = 1) or 4 rows of
  // w.
  // Larger m converts blocks of 1024 rows, and n = 1030 crosses a block. k covers part of a
  // 32-input step, one step and several, and n ends inside a tile.
  std::vector<Shape> shapes = {{1, 1, 1},    {1, 37, 17}, {2, 9, 64},     {3, 5, 33},
                               {4, 130, 70}, {5, 7, 16},  {7, 5, 31},     {8, 11, 100},
                               {9, 10, 40},  {12, 3, 65}, {16, 6, 20},    {17, 1030, 40},
                               {1, 1030, 129}, {3, 5, 0}};
  // Every m up to 16, so every pass size runs with the tile width that its m selects.
  for (int64_t m = 1; m <= 16; ++m) shapes.push_back({m, 19, 45});
  std::mt19937 engine(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (Isa isa : SupportedIsas()) {
    for (const Shape& shape : shapes) {
      std::vector<float> x(static_cast<size_t>(shape.m * shape.k));
      for (float& value : x) value = normal(engine);
      std::vector<uint16_t> w(static_cast<size_t>(shape.n * shape.k));
      for (uint16_t& value : w) value = ToBf16Truncated(normal(engine));
      std::vector<float> y(static_cast<size_t>(shape.m * shape.n), NAN);
      GemmBf16Weights(isa, x.data(), w.data(), y.data(), shape.m, shape.n, shape.k);
      const std::string context = std::string(IsaName(isa)) + " m=" + std::to_string(shape.m) +
                                  " n=" + std::to_string(shape.n) + " k=" + std::to_string(shape.k);
      for (int64_t r = 0; r < shape.m; ++r) {
        for (int64_t c = 0; c < shape.n; ++c) {
          double expected = 0.0;
          double magnitude = 0.0;
          for (int64_t i = 0; i < shape.k; ++i) {
            const double term = double{x[r * shape.k + i]} * Bf16AsDouble(w[c * shape.k + i]);
            expected += term;
            magnitude += std::fabs(term);
          }
          ASSERT_NEAR(y[r * shape.n + c], expected, 1e-6 * magnitude + 1e-6)
              << context << " at " << r << ", " << c;
        }
      }
    }
  }
}

}  // namespace
}  // namespace w8a8::kernels

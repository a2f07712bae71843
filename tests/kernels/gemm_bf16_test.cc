#include "kernels/gemm_bf16.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
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

TEST(Bf16MatrixTest, RowsConvertExactly) {
  const std::vector<float> values = {0.0f,   -0.0f,    1.0f,     -2.5f,    3.140625f,  1e-30f,
                                     -7e20f, INFINITY, 65504.0f, 0.15625f, -1.0f / 64, 1e38f,
                                     3.0f,   -4.0f,    5.0f,     6.0f,     7.0f,       8.0f};
  std::vector<uint16_t> bf16;
  for (float value : values) bf16.push_back(ToBf16Truncated(value));
  // The same values as 1 row, as 2 rows of an odd 9 columns, and as 18 rows of 1 column.
  for (int64_t cols : {18, 9, 1}) {
    const int64_t rows = static_cast<int64_t>(values.size()) / cols;
    const Bf16Matrix matrix(bf16.data(), rows, cols);
    for (int64_t row = 0; row < rows; ++row) {
      std::vector<float> out(static_cast<size_t>(cols), -1.0f);
      matrix.Row(row, out.data());
      for (int64_t col = 0; col < cols; ++col) {
        const size_t i = static_cast<size_t>(row * cols + col);
        EXPECT_EQ(out[static_cast<size_t>(col)], static_cast<float>(Bf16AsDouble(bf16[i])))
            << "value " << values[i] << " as row " << row << " of " << rows;
      }
    }
  }
  // 70 rows span three tiles.
  std::vector<uint16_t> many(70 * 3);
  for (size_t i = 0; i < many.size(); ++i) many[i] = ToBf16Truncated(float(i) - 100.0f);
  const Bf16Matrix tall(many.data(), 70, 3);
  for (int64_t row = 0; row < 70; ++row) {
    std::vector<float> out(3);
    tall.Row(row, out.data());
    for (int64_t col = 0; col < 3; ++col) {
      EXPECT_EQ(out[static_cast<size_t>(col)], float(row * 3 + col) - 100.0f)
          << row << ", " << col;
    }
  }

  const Bf16Matrix one_row(bf16.data(), 1, 18);
  std::vector<float> out(18);
  one_row.Row(0, out.data());
  // These values have at most 8 significant bits, so BF16 keeps them unchanged.
  EXPECT_EQ(out[2], 1.0f);
  EXPECT_EQ(out[3], -2.5f);
  EXPECT_EQ(out[4], 3.140625f);
}

TEST(Bf16MatrixTest, UnalignedValuesPackLikeAlignedOnes) {
  std::vector<uint16_t> bf16(5 * 7);
  for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = ToBf16Truncated(0.5f * float(i) - 3.0f);
  std::vector<unsigned char> shifted(bf16.size() * 2 + 1);
  std::memcpy(shifted.data() + 1, bf16.data(), bf16.size() * 2);
  const Bf16Matrix aligned(bf16.data(), 5, 7);
  const Bf16Matrix unaligned(shifted.data() + 1, 5, 7);
  for (int64_t row = 0; row < 5; ++row) {
    std::vector<float> a(7), b(7);
    aligned.Row(row, a.data());
    unaligned.Row(row, b.data());
    EXPECT_EQ(a, b) << "row " << row;
  }
}

struct Shape {
  int64_t m, n, k;
};

// Multiplies random matrices of every shape and compares each output with the product in
// double precision. The tolerance is units_per_column * k + units units of FP32 rounding
// (2^-24) times the sum of the magnitudes of the terms.
void ExpectMatchesDoublePrecision(Isa isa, bool allow_amx, const std::vector<Shape>& shapes,
                                  double units_per_column, double units) {
  std::mt19937 engine(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const Shape& shape : shapes) {
    std::vector<float> x(static_cast<size_t>(shape.m * shape.k));
    for (float& value : x) value = normal(engine);
    std::vector<uint16_t> w(static_cast<size_t>(shape.n * shape.k));
    for (uint16_t& value : w) value = ToBf16Truncated(normal(engine));
    const Bf16Matrix matrix(w.data(), shape.n, shape.k);
    ASSERT_EQ(matrix.rows(), shape.n);
    ASSERT_EQ(matrix.cols(), shape.k);
    std::vector<float> y(static_cast<size_t>(shape.m * shape.n), NAN);
    matrix.Multiply(isa, x.data(), shape.m, y.data(), allow_amx);
    const std::string context = std::string(IsaName(isa)) + (allow_amx ? " with AMX" : "") +
                                " m=" + std::to_string(shape.m) + " n=" +
                                std::to_string(shape.n) + " k=" + std::to_string(shape.k);
    for (int64_t r = 0; r < shape.m; ++r) {
      for (int64_t c = 0; c < shape.n; ++c) {
        double expected = 0.0;
        double magnitude = 0.0;
        for (int64_t i = 0; i < shape.k; ++i) {
          const double term = double{x[r * shape.k + i]} * Bf16AsDouble(w[c * shape.k + i]);
          expected += term;
          magnitude += std::fabs(term);
        }
        const double tolerance =
            (units_per_column * double(shape.k) + units) * 0x1p-24 * magnitude;
        ASSERT_NEAR(y[r * shape.n + c], expected, tolerance)
            << context << " at " << r << ", " << c;
      }
    }
  }
}

TEST(Bf16MatrixTest, EveryIsaMatchesDoublePrecision) {
  // Tiles contain 32 rows of the matrix, so n = 1, 37, 130 and 1030 end inside a tile, and odd
  // k leaves a last column without a partner. m = 1 runs 8 tiles at a time, m = 2 four, m = 3
  // and 4 two, and larger m one tile in passes of at most 8 rows of x: m = 17 in passes of 6, 6
  // and 5 rows, m = 24 and 40 in three and five passes of 8. On the other paths, m > 16 converts
  // blocks of 1024 rows (n = 1030 crosses one) for GemmF32.
  std::vector<Shape> shapes = {{1, 1, 1},     {1, 37, 17},   {2, 9, 64},    {3, 5, 33},
                               {4, 130, 70},  {5, 7, 16},    {7, 5, 31},    {8, 11, 100},
                               {9, 10, 40},   {12, 3, 65},   {16, 6, 20},   {17, 1030, 40},
                               {1, 1030, 129}, {3, 5, 0},    {24, 70, 3},   {40, 33, 2},
                               {1, 200, 2},   {2, 129, 1},  {1, 300, 5}};
  // n = 256 and 64 fill their last tile, and n = 57 fills the first half of it. With k = 8192
  // and 2048, m = 17 and 65 run two blocks of rows of x (16 + 1 and 64 + 1).
  shapes.insert(shapes.end(), {{1, 256, 5}, {5, 64, 3}, {1, 57, 7}, {17, 40, 8192},
                               {65, 33, 2048}});
  // Every m up to 16, so every pass size runs with the tile count that its m selects. The last
  // tile has 25 rows, so its second half of 16 is partial.
  for (int64_t m = 1; m <= 16; ++m) shapes.push_back({m, 121, 45});
  for (Isa isa : SupportedIsas()) {
    // A sum of k products in FP32 is within k units of rounding of the sum of their
    // magnitudes.
    ExpectMatchesDoublePrecision(isa, /*allow_amx=*/false, shapes, /*units_per_column=*/1.0,
                                 /*units=*/1.0);
  }
}

TEST(Bf16MatrixTest, AmxMatchesDoublePrecision) {
  if (!AmxBf16Usable()) {
    GTEST_SKIP() << "AMX BF16 is not usable in this process";
  }
  // AMX runs for m >= 8 where k is a multiple of 32, or one less (the zero column past an odd
  // k completes the last pair). Tiles of x have up to 16 rows, so m = 17 and 40 run two and
  // three of them, and k = 96 three steps of 32 columns. n = 57 and 121 end in the second half
  // of a tile, n = 33 and 70 in the first. AMX runs the tiles in pairs, and n = 1, 3, 70 and
  // 1030 end with an odd one. m <= 7 and k = 45 keep the AVX-512 path.
  std::vector<Shape> shapes = {{17, 57, 96},  {40, 33, 2048}, {8, 1, 32},    {9, 3, 31},
                               {20, 70, 63},  {10, 1030, 64}, {17, 40, 8192}, {9, 121, 45}};
  for (int64_t m = 1; m <= 16; ++m) shapes.push_back({m, 121, 64});
  // x = high + low + rest with |rest| <= 2^-16 |x|, so each term is off by at most 256 units
  // of FP32 rounding before the sum, which adds 2k products in FP32.
  ExpectMatchesDoublePrecision(Isa::kAvx512Vnni, /*allow_amx=*/true, shapes,
                               /*units_per_column=*/2.0, /*units=*/258.0);
}

// Each row of the matrix has one power of two, so each output is one input of x times a
// power of two, which FP32 represents exactly. The FP32 paths must return it exactly, and
// AMX within 2^-16 of it (its two BF16 parts of x), which fails if a part is dropped.
TEST(Bf16MatrixTest, ScaledPermutationsMatchTheirInputs) {
  constexpr int64_t kN = 37, kK = 64;
  std::vector<uint16_t> w(kN * kK, ToBf16Truncated(0.0f));
  std::vector<int64_t> source(kN);
  std::vector<float> scale(kN);
  for (int64_t row = 0; row < kN; ++row) {
    source[row] = row * 7 % kK;
    scale[row] = std::ldexp(row % 2 == 0 ? 1.0f : -1.0f, static_cast<int>(row % 5) - 2);
    w[row * kK + source[row]] = ToBf16Truncated(scale[row]);
  }
  const Bf16Matrix matrix(w.data(), kN, kK);
  std::mt19937 engine(4);
  std::uniform_real_distribution<float> uniform(-3.0f, 3.0f);
  std::vector<std::pair<Isa, bool>> paths;
  for (Isa isa : SupportedIsas()) paths.push_back({isa, false});
  if (AmxBf16Usable()) paths.push_back({Isa::kAvx512Vnni, true});
  for (const auto& [isa, allow_amx] : paths) {
    for (int64_t m : {1, 4, 5, 8, 16, 17, 33}) {
      std::vector<float> x(static_cast<size_t>(m * kK));
      for (float& value : x) value = uniform(engine);
      std::vector<float> y(static_cast<size_t>(m * kN), NAN);
      matrix.Multiply(isa, x.data(), m, y.data(), allow_amx);
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t row = 0; row < kN; ++row) {
          const float expected = x[r * kK + source[row]] * scale[row];
          const float tolerance = allow_amx && m >= 8 ? std::ldexp(std::fabs(expected), -16) : 0;
          ASSERT_NEAR(y[r * kN + row], expected, tolerance)
              << IsaName(isa) << (allow_amx ? " with AMX" : "") << " m=" << m << " at " << r
              << ", " << row;
        }
      }
    }
  }
}

// A NaN input makes every output of its row NaN on every path, and leaves the other rows
// finite. This NaN has every mantissa bit set, so rounding its bits to BF16 without a check
// carries into the sign and gives -0, which the split of x into BF16 parts for AMX must avoid.
TEST(Bf16MatrixTest, NanInputGivesNanRow) {
  constexpr int64_t kN = 40, kK = 64, kM = 9, kNanRow = 3;
  std::vector<uint16_t> w(kN * kK);
  for (size_t i = 0; i < w.size(); ++i) w[i] = ToBf16Truncated(static_cast<float>(i % 7) - 3.0f);
  const Bf16Matrix matrix(w.data(), kN, kK);
  std::vector<float> x(kM * kK, 0.5f);
  x[kNanRow * kK + 10] = std::bit_cast<float>(0x7fffffffu);
  std::vector<std::pair<Isa, bool>> paths;
  for (Isa isa : SupportedIsas()) paths.push_back({isa, false});
  if (AmxBf16Usable()) paths.push_back({Isa::kAvx512Vnni, true});
  for (const auto& [isa, allow_amx] : paths) {
    std::vector<float> y(kM * kN, 0.0f);
    matrix.Multiply(isa, x.data(), kM, y.data(), allow_amx);
    for (int64_t r = 0; r < kM; ++r) {
      for (int64_t row = 0; row < kN; ++row) {
        EXPECT_EQ(std::isnan(y[r * kN + row]), r == kNanRow)
            << IsaName(isa) << (allow_amx ? " with AMX" : "") << " at " << r << ", " << row;
      }
    }
  }
}

}  // namespace
}  // namespace w8a8::kernels

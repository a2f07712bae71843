#include "kernels/softmax.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_features.h"

namespace w8a8::kernels {
namespace {

// Every path against exp in FP64 of the same FP32 argument: each value within 1e-6 relative,
// the sum within 1e-6 of the exact sum, and the element past `count` untouched. Counts cover a partial vector, one
// vector, one more and a vocabulary.
TEST(ExpSumTest, EveryIsaMatchesDoublePrecision) {
  std::mt19937 engine(5);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (Isa isa : SupportedIsas()) {
    for (int64_t count : {1, 15, 16, 17, 1000, 128256}) {
      std::vector<float> x(static_cast<size_t>(count));
      for (float& value : x) value = normal(engine);
      const float shift = 3.5f;
      const float scale = 1.0f / 0.7f;
      std::vector<float> out(static_cast<size_t>(count) + 1, -1.0f);
      const double sum = ExpSum(isa, x.data(), count, shift, scale, out.data());
      const std::string context = std::string(IsaName(isa)) + " count=" + std::to_string(count);
      double expected_sum = 0.0;
      for (int64_t i = 0; i < count; ++i) {
        const float argument = (x[i] - shift) * scale;
        const double expected = std::exp(static_cast<double>(argument));
        expected_sum += expected;
        ASSERT_NEAR(out[i], expected, 1e-6 * expected) << context << " at " << i;
      }
      EXPECT_NEAR(sum, expected_sum, 1e-6 * expected_sum) << context;
      EXPECT_EQ(out[static_cast<size_t>(count)], -1.0f) << context;
    }
  }
}

// Arguments far below the FP32 range give at most exp(-87), and zero counts write nothing.
TEST(ExpSumTest, TinyArgumentsAndEmptyInput) {
  const std::vector<float> x = {-200.0f, 0.0f};
  for (Isa isa : SupportedIsas()) {
    std::vector<float> out(2, -1.0f);
    const double sum = ExpSum(isa, x.data(), 2, 0.0f, 1.0f, out.data());
    EXPECT_GE(out[0], 0.0f) << IsaName(isa);
    EXPECT_LE(out[0], std::exp(-87.0f)) << IsaName(isa);
    EXPECT_EQ(out[1], 1.0f) << IsaName(isa);
    EXPECT_NEAR(sum, 1.0, 1e-30) << IsaName(isa);
    EXPECT_EQ(ExpSum(isa, x.data(), 0, 0.0f, 1.0f, out.data()), 0.0) << IsaName(isa);
  }
}

}  // namespace
}  // namespace w8a8::kernels

// Weight quantization schemes and the per-layer weight analysis.
#include <cmath>
#include <random>
#include <vector>

#include "core/quant_analysis.h"
#include "core/weight_quantizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace w8a8 {
namespace {

std::vector<float> GaussianMatrix(int64_t rows, int64_t columns, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> values(static_cast<size_t>(rows * columns));
  for (float& value : values) value = normal(rng);
  return values;
}

double RelativeError(const std::vector<float>& reference, const std::vector<float>& approx) {
  double error = 0.0;
  double signal = 0.0;
  for (size_t i = 0; i < reference.size(); ++i) {
    const double difference = static_cast<double>(reference[i]) - approx[i];
    error += difference * difference;
    signal += static_cast<double>(reference[i]) * reference[i];
  }
  return std::sqrt(error / signal);
}

TEST(WeightQuantizer, PerChannelScaleIsRowMaxOver127) {
  const std::vector<float> weight = {0.5f, -1.0f, 0.25f,  //
                                     2.0f, 1.0f, -0.5f};
  absl::StatusOr<QuantizedWeight> quantized =
      QuantizeWeight(weight, 2, 3, WeightScheme::kPerChannel, 0);
  ASSERT_TRUE(quantized.ok()) << quantized.status();
  ASSERT_EQ(quantized->scales.size(), 2u);
  EXPECT_FLOAT_EQ(quantized->scales[0], 1.0f / 127.0f);
  EXPECT_FLOAT_EQ(quantized->scales[1], 2.0f / 127.0f);
  EXPECT_EQ(quantized->values[1], -127);
  EXPECT_EQ(quantized->values[3], 127);
  EXPECT_EQ(quantized->values[2], 32);   // 0.25 * 127 = 31.75.
  EXPECT_EQ(quantized->values[5], -32);  // -0.5 * 127 / 2 = -31.75.
  EXPECT_TRUE(quantized->Validate().ok());
}

TEST(WeightQuantizer, ErrorStaysWithinHalfAStep) {
  const std::vector<float> weight = GaussianMatrix(16, 40, 1);
  for (WeightScheme scheme :
       {WeightScheme::kPerTensor, WeightScheme::kPerChannel, WeightScheme::kPerGroup}) {
    absl::StatusOr<QuantizedWeight> quantized = QuantizeWeight(weight, 16, 40, scheme, 8);
    ASSERT_TRUE(quantized.ok()) << quantized.status();
    const std::vector<float> restored = DequantizeWeight(*quantized);
    for (int64_t row = 0; row < 16; ++row) {
      for (int64_t column = 0; column < 40; ++column) {
        const size_t i = static_cast<size_t>(row * 40 + column);
        ASSERT_LE(std::fabs(restored[i] - weight[i]),
                  0.5f * quantized->ScaleAt(row, column) * (1.0f + 1e-5f))
            << WeightSchemeName(scheme) << " row " << row << " column " << column;
      }
    }
  }
}

TEST(WeightQuantizer, ShorterLastGroupGetsItsOwnScale) {
  // 10 inputs in groups of 4: sizes 4, 4, 2.
  std::vector<float> weight(10, 0.1f);
  weight[9] = 5.0f;
  absl::StatusOr<QuantizedWeight> quantized =
      QuantizeWeight(weight, 1, 10, WeightScheme::kPerGroup, 4);
  ASSERT_TRUE(quantized.ok()) << quantized.status();
  EXPECT_EQ(NumGroups(10, 4), 3);
  EXPECT_EQ(LastGroupSize(10, 4), 2);
  ASSERT_EQ(quantized->scales.size(), 3u);
  EXPECT_FLOAT_EQ(quantized->scales[0], 0.1f / 127.0f);
  EXPECT_FLOAT_EQ(quantized->scales[1], 0.1f / 127.0f);
  EXPECT_FLOAT_EQ(quantized->scales[2], 5.0f / 127.0f);
  EXPECT_EQ(quantized->values[8], 3);  // 0.1 / (5 / 127) = 2.54.
  EXPECT_EQ(quantized->values[9], 127);
  EXPECT_FLOAT_EQ(quantized->ScaleAt(0, 8), 5.0f / 127.0f);
  EXPECT_FLOAT_EQ(quantized->ScaleAt(0, 7), 0.1f / 127.0f);
}

TEST(WeightQuantizer, GroupSizeLargerThanRowIsOneGroup) {
  const std::vector<float> weight = GaussianMatrix(3, 5, 2);
  absl::StatusOr<QuantizedWeight> grouped =
      QuantizeWeight(weight, 3, 5, WeightScheme::kPerGroup, 128);
  absl::StatusOr<QuantizedWeight> channel =
      QuantizeWeight(weight, 3, 5, WeightScheme::kPerChannel, 0);
  ASSERT_TRUE(grouped.ok()) << grouped.status();
  ASSERT_TRUE(channel.ok()) << channel.status();
  EXPECT_EQ(grouped->values, channel->values);
  EXPECT_EQ(grouped->scales, channel->scales);
}

TEST(WeightQuantizer, ZeroRowGetsUnitScale) {
  const std::vector<float> weight = {0.0f, 0.0f, 1.0f, -1.0f};
  absl::StatusOr<QuantizedWeight> quantized =
      QuantizeWeight(weight, 2, 2, WeightScheme::kPerChannel, 0);
  ASSERT_TRUE(quantized.ok()) << quantized.status();
  EXPECT_FLOAT_EQ(quantized->scales[0], 1.0f);
  EXPECT_EQ(quantized->values[0], 0);
  EXPECT_EQ(quantized->values[1], 0);
}

TEST(WeightQuantizer, RejectsInvalidInputs) {
  const std::vector<float> weight = {1.0f, 2.0f, 3.0f, 4.0f};
  EXPECT_FALSE(QuantizeWeight(weight, 2, 2, WeightScheme::kFp, 0).ok());
  EXPECT_FALSE(QuantizeWeight(weight, 2, 2, WeightScheme::kPerGroup, 0).ok());
  EXPECT_FALSE(QuantizeWeight(weight, 3, 2, WeightScheme::kPerChannel, 0).ok());
  std::vector<float> with_nan = weight;
  with_nan[3] = std::nanf("");
  absl::StatusOr<QuantizedWeight> nan_result =
      QuantizeWeight(with_nan, 2, 2, WeightScheme::kPerChannel, 0);
  ASSERT_FALSE(nan_result.ok());
  EXPECT_THAT(std::string(nan_result.status().message()), ::testing::HasSubstr("row 1"));
}

TEST(WeightQuantizer, ValidateCatchesWrongScaleCount) {
  absl::StatusOr<QuantizedWeight> quantized = QuantizeWeight(
      GaussianMatrix(4, 8, 3), 4, 8, WeightScheme::kPerGroup, 3);
  ASSERT_TRUE(quantized.ok()) << quantized.status();
  EXPECT_TRUE(quantized->Validate().ok());
  quantized->scales.pop_back();
  EXPECT_FALSE(quantized->Validate().ok());
}

TEST(WeightAnalysis, ErrorsMatchQuantizeAndDequantize) {
  const int64_t rows = 24;
  const int64_t columns = 50;
  const std::vector<float> weight = GaussianMatrix(rows, columns, 4);
  const LayerAnalysis analysis = AnalyzeWeight("layer", weight, rows, columns, 16);
  EXPECT_EQ(analysis.group_size, 16);
  EXPECT_EQ(analysis.last_group_size, 2);
  const struct {
    WeightScheme scheme;
    double reported;
  } cases[] = {{WeightScheme::kPerTensor, analysis.per_tensor.relative_error},
               {WeightScheme::kPerChannel, analysis.per_channel.relative_error},
               {WeightScheme::kPerGroup, analysis.per_group.relative_error}};
  for (const auto& test_case : cases) {
    absl::StatusOr<QuantizedWeight> quantized =
        QuantizeWeight(weight, rows, columns, test_case.scheme, 16);
    ASSERT_TRUE(quantized.ok()) << quantized.status();
    EXPECT_NEAR(test_case.reported, RelativeError(weight, DequantizeWeight(*quantized)), 1e-9)
        << WeightSchemeName(test_case.scheme);
  }
  EXPECT_NEAR(analysis.per_channel.sqnr_db,
              -20.0 * std::log10(analysis.per_channel.relative_error), 1e-9);
}

TEST(WeightAnalysis, GaussianStatistics) {
  const std::vector<float> weight = GaussianMatrix(256, 256, 5);
  const LayerAnalysis analysis = AnalyzeWeight("layer", weight, 256, 256, 128);
  EXPECT_NEAR(analysis.stddev, 0.02, 0.001);
  EXPECT_NEAR(analysis.kurtosis, 3.0, 0.1);
  EXPECT_GT(analysis.worst_row_max_to_rms, 2.5);
  EXPECT_LT(analysis.worst_row_max_to_rms, 6.0);
  // Finer scales never lose: per-group <= per-channel <= per-tensor.
  EXPECT_LE(analysis.per_group.relative_error, analysis.per_channel.relative_error);
  EXPECT_LE(analysis.per_channel.relative_error, analysis.per_tensor.relative_error);
}

TEST(WeightAnalysis, OutlierHurtsPerChannelMost) {
  const int64_t rows = 64;
  const int64_t columns = 128;
  std::vector<float> weight = GaussianMatrix(rows, columns, 6);
  const LayerAnalysis clean = AnalyzeWeight("clean", weight, rows, columns, 16);
  for (int64_t row = 0; row < rows; ++row) weight[row * columns + (row % columns)] *= 100.0f;
  const LayerAnalysis outlier = AnalyzeWeight("outlier", weight, rows, columns, 16);
  EXPECT_GT(outlier.per_channel.relative_error, 3.0 * clean.per_channel.relative_error);
  EXPECT_LT(outlier.per_group.relative_error, 0.5 * outlier.per_channel.relative_error);
  EXPECT_GT(outlier.kurtosis, 10.0 * clean.kurtosis);
  EXPECT_GT(outlier.worst_row_max_to_rms, 2.0 * clean.worst_row_max_to_rms);
}

TEST(RobustStatistics, MedianAndMadOfSmallSamples) {
  RobustStatistics odd = MedianAndMad({1.0, 9.0, 2.0, 3.0, 4.0});
  EXPECT_DOUBLE_EQ(odd.median, 3.0);
  EXPECT_DOUBLE_EQ(odd.mad, 1.0);  // Deviations 2, 6, 1, 0, 1.
  RobustStatistics even = MedianAndMad({1.0, 2.0, 3.0, 10.0});
  EXPECT_DOUBLE_EQ(even.median, 2.5);
  EXPECT_DOUBLE_EQ(even.mad, 1.0);  // Deviations 1.5, 0.5, 0.5, 7.5.
  RobustStatistics empty = MedianAndMad({});
  EXPECT_DOUBLE_EQ(empty.median, 0.0);
  EXPECT_DOUBLE_EQ(RobustZScore(4.4826, {3.0, 1.0}), 1.0);
}

}  // namespace
}  // namespace w8a8

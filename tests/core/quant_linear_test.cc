// QuantizedLinear against a double-precision product of the same int8 operands.
#include <cmath>
#include <random>
#include <vector>

#include "core/quantized_linear.h"
#include "gtest/gtest.h"

namespace w8a8 {
namespace {

std::vector<float> RandomValues(int64_t count, float stddev, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> values(static_cast<size_t>(count));
  for (float& value : values) value = normal(rng);
  return values;
}

// Symmetric int8 quantization of rows [begin, end) of x with one scale, as the kernels specify:
// scale = max|x| / 127 (1 for zeros), q = round(x / scale).
void QuantizeRows(const std::vector<float>& x, int64_t k, int64_t begin, int64_t end,
                  std::vector<int8_t>& q, std::vector<float>& scales) {
  float max_abs = 0.0f;
  for (int64_t i = begin * k; i < end * k; ++i) max_abs = std::max(max_abs, std::fabs(x[i]));
  const float scale = max_abs > 0.0f ? max_abs / 127.0f : 1.0f;
  for (int64_t i = begin * k; i < end * k; ++i) {
    q[i] = static_cast<int8_t>(std::clamp(std::nearbyint(x[i] / scale), -127.0f, 127.0f));
  }
  for (int64_t row = begin; row < end; ++row) scales[row] = scale;
}

// y = (x_scale * xq) (dequantized W)^T in double, with the activation quantization of `scheme`.
std::vector<double> ReferenceProduct(const std::vector<float>& x, int64_t m,
                                     const QuantizedWeight& weight, ActivationScheme scheme) {
  const int64_t k = weight.in_features;
  std::vector<int8_t> xq(x.size());
  std::vector<float> x_scales(static_cast<size_t>(m));
  if (scheme == ActivationScheme::kPerToken) {
    for (int64_t row = 0; row < m; ++row) QuantizeRows(x, k, row, row + 1, xq, x_scales);
  } else {
    QuantizeRows(x, k, 0, m, xq, x_scales);
  }
  std::vector<double> y(static_cast<size_t>(m * weight.out_features));
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t out = 0; out < weight.out_features; ++out) {
      double sum = 0.0;
      for (int64_t i = 0; i < k; ++i) {
        sum += static_cast<double>(xq[row * k + i]) * weight.values[out * k + i] *
               weight.ScaleAt(out, i);
      }
      y[row * weight.out_features + out] = sum * x_scales[row];
    }
  }
  return y;
}

struct LinearCase {
  WeightScheme scheme;
  int64_t group_size;
  ActivationScheme activations;
};

TEST(QuantizedLinear, MatchesDoublePrecisionReference) {
  const int64_t n = 24;
  const int64_t k = 70;  // Groups of 16 leave a last group of 6.
  const int64_t m = 5;
  const std::vector<float> w = RandomValues(n * k, 0.05f, 1);
  const std::vector<float> x = RandomValues(m * k, 1.0f, 2);
  const LinearCase cases[] = {
      {WeightScheme::kPerChannel, 0, ActivationScheme::kPerToken},
      {WeightScheme::kPerGroup, 16, ActivationScheme::kPerToken},
      {WeightScheme::kPerGroup, 128, ActivationScheme::kPerToken},
      {WeightScheme::kPerTensor, 0, ActivationScheme::kPerToken},
      {WeightScheme::kPerChannel, 0, ActivationScheme::kPerTensor},
      {WeightScheme::kPerGroup, 16, ActivationScheme::kPerTensor},
  };
  for (const LinearCase& test_case : cases) {
    SCOPED_TRACE(std::string(WeightSchemeName(test_case.scheme)) + " G=" +
                 std::to_string(test_case.group_size) + " " +
                 std::string(ActivationSchemeName(test_case.activations)));
    absl::StatusOr<QuantizedWeight> weight =
        QuantizeWeight(w, n, k, test_case.scheme, test_case.group_size);
    ASSERT_TRUE(weight.ok()) << weight.status();
    absl::StatusOr<std::unique_ptr<LinearLayer>> layer =
        MakeQuantizedLinear(*weight, test_case.activations);
    ASSERT_TRUE(layer.ok()) << layer.status();
    EXPECT_EQ((*layer)->in_features(), k);
    EXPECT_EQ((*layer)->out_features(), n);
    EXPECT_EQ((*layer)->scheme(), WeightSchemeName(test_case.scheme));
    EXPECT_EQ((*layer)->weight_bytes(), weight->values.size() + weight->scales.size() * 4);

    std::vector<float> y(static_cast<size_t>(m * n));
    (*layer)->Forward(x.data(), m, y.data());
    const std::vector<double> expected = ReferenceProduct(x, m, *weight, test_case.activations);
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_NEAR(y[i], expected[i], 1e-4 * (1.0 + std::fabs(expected[i]))) << "element " << i;
    }

    // The int8 product stays close to the FP32 product.
    double error = 0.0;
    double signal = 0.0;
    for (int64_t row = 0; row < m; ++row) {
      for (int64_t out = 0; out < n; ++out) {
        double exact = 0.0;
        for (int64_t i = 0; i < k; ++i) exact += static_cast<double>(x[row * k + i]) * w[out * k + i];
        error += (y[row * n + out] - exact) * (y[row * n + out] - exact);
        signal += exact * exact;
      }
    }
    EXPECT_LT(std::sqrt(error / signal), 0.03);
  }
}

TEST(QuantizedLinear, RejectsInconsistentWeight) {
  absl::StatusOr<QuantizedWeight> weight =
      QuantizeWeight(RandomValues(8 * 8, 0.1f, 3), 8, 8, WeightScheme::kPerChannel, 0);
  ASSERT_TRUE(weight.ok()) << weight.status();
  weight->scales.resize(3);
  EXPECT_FALSE(MakeQuantizedLinear(*weight, ActivationScheme::kPerToken).ok());
}

}  // namespace
}  // namespace w8a8

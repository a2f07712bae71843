// Int8Matmul on the weights of the trained stories260K model, read in place from its GGUF
// file. The down projection has k = 172, so group size 128 gives groups of 128 and 44.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "gtest/gtest.h"
#include "kernels/cpu_features.h"
#include "kernels/gemm.h"
#include "kernels/reference.h"
#include "tests/test_util.h"

namespace w8a8::kernels {
namespace {

struct QuantizedWeights {
  std::vector<int8_t> values;
  std::vector<float> scales;
};

// Symmetric int8 weights with one scale per row (group_size 0) or per group of a row.
QuantizedWeights QuantizeWeights(const std::vector<float>& weights, int64_t n, int64_t k,
                                 int64_t group_size) {
  const int64_t span = group_size == 0 ? k : group_size;
  const int64_t groups = (k + span - 1) / span;
  QuantizedWeights quantized;
  quantized.values.resize(n * k);
  quantized.scales.resize(n * groups);
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t begin = group * span;
      const int64_t length = std::min(span, k - begin);
      const float* source = &weights[row * k + begin];
      float max_abs = 0.0f;
      for (int64_t i = 0; i < length; ++i) max_abs = std::max(max_abs, std::fabs(source[i]));
      quantized.scales[row * groups + group] = reference::QuantizeWithMax(
          source, length, max_abs, &quantized.values[row * k + begin]);
    }
  }
  return quantized;
}

struct Layer {
  const char* name;
  int64_t n;
  int64_t k;
};

TEST(Stories260kMatmul, Int8CloseToFp32OnEveryIsa) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(testing::Stories260KGguf());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const int64_t hidden = (*checkpoint)->config().hidden_size;
  const int64_t intermediate = (*checkpoint)->config().intermediate_size;
  ASSERT_EQ(intermediate, 172);
  const Layer layers[] = {
      {"model.layers.0.self_attn.q_proj.weight", hidden, hidden},
      {"model.layers.0.mlp.up_proj.weight", intermediate, hidden},
      {"model.layers.4.mlp.down_proj.weight", hidden, intermediate},
  };
  const int64_t m = 7;
  for (const Layer& layer : layers) {
    absl::StatusOr<std::vector<float>> weights =
        (*checkpoint)->LoadFloat32(layer.name, {layer.n, layer.k});
    ASSERT_TRUE(weights.ok()) << weights.status();

    std::mt19937 engine(42);
    std::normal_distribution<float> distribution(0.0f, 1.0f);
    std::vector<float> x(m * layer.k);
    for (float& value : x) value = distribution(engine);
    std::vector<float> expected(m * layer.n);
    reference::GemmF32(x.data(), weights->data(), expected.data(), m, layer.n, layer.k);
    double expected_energy = 0.0;
    for (float value : expected) expected_energy += double{value} * double{value};

    std::vector<int8_t> xq(m * layer.k);
    std::vector<float> x_scales(m);
    QuantizePerToken(x.data(), m, layer.k, xq.data(), x_scales.data());

    for (int64_t group_size : {0, 128}) {
      const QuantizedWeights quantized = QuantizeWeights(*weights, layer.n, layer.k, group_size);
      std::vector<float> exact(m * layer.n);
      reference::Int8Matmul(xq.data(), x_scales.data(), m, quantized.values.data(), layer.n,
                            layer.k, quantized.scales.data(), group_size, exact.data());
      for (Isa isa : SupportedIsas()) {
        const std::string context = std::string(layer.name) + " " + std::string(IsaName(isa)) +
                                    " group_size=" + std::to_string(group_size);
        absl::StatusOr<std::unique_ptr<Int8Matmul>> matmul = Int8Matmul::Create(
            quantized.values, layer.n, layer.k, quantized.scales, group_size, isa);
        ASSERT_TRUE(matmul.ok()) << context << ": " << matmul.status();
        std::vector<float> y(m * layer.n);
        (*matmul)->Run(xq.data(), x_scales.data(), m, y.data());

        double error_energy = 0.0;
        for (int64_t i = 0; i < m * layer.n; ++i) {
          // Against the int8 reference only float rounding differs, over at most two groups.
          ASSERT_NEAR(y[i], exact[i], 1e-5 * (std::fabs(exact[i]) + 1e-3))
              << context << " at " << i;
          const double error = double{y[i]} - double{expected[i]};
          error_energy += error * error;
        }
        // W8A8 measured 0.7% to 1.0% relative RMS error against FP32 on these layers. The 3%
        // bound leaves room for other ISAs while still catching a wrong scale or group.
        const double relative_rms = std::sqrt(error_energy / expected_energy);
        EXPECT_LT(relative_rms, 0.03) << context;
        RecordProperty(context, std::to_string(relative_rms));
      }
    }
  }
}

}  // namespace
}  // namespace w8a8::kernels

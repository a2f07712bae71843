// Rotary inverse frequencies, plain and with Llama 3.1 scaling, against the published formula
// evaluated here in double precision.
#include <cmath>
#include <numbers>

#include "core/model.h"
#include "gtest/gtest.h"

namespace w8a8 {
namespace {

ModelConfig RopeConfig(int64_t head_dim, double theta) {
  ModelConfig config;
  config.head_dim = head_dim;
  config.rope_theta = theta;
  return config;
}

// The "llama3" rope_type of Transformers' modeling_rope_utils, written from its definition.
double ScaledFrequency(double freq, const Llama3RopeScaling& s) {
  const double wavelen = 2 * std::numbers::pi / freq;
  const double low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const double high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
  if (wavelen < high_freq_wavelen) return freq;
  if (wavelen > low_freq_wavelen) return freq / s.factor;
  const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
  return (1 - smooth) * freq / s.factor + smooth * freq;
}

TEST(RopeTest, UnscaledFrequenciesFollowTheta) {
  const ModelConfig config = RopeConfig(8, 10000.0);
  const std::vector<float> inv_freq = RopeInverseFrequencies(config);
  ASSERT_EQ(inv_freq.size(), 4u);
  EXPECT_FLOAT_EQ(inv_freq[0], 1.0f);
  EXPECT_FLOAT_EQ(inv_freq[1], 0.1f);
  EXPECT_FLOAT_EQ(inv_freq[2], 0.01f);
  EXPECT_FLOAT_EQ(inv_freq[3], 0.001f);
}

TEST(RopeTest, Llama31ScalingMatchesFormula) {
  ModelConfig config = RopeConfig(128, 500000.0);
  config.rope_scaling = Llama3RopeScaling{8.0, 1.0, 4.0, 8192};
  const std::vector<float> inv_freq = RopeInverseFrequencies(config);
  ASSERT_EQ(inv_freq.size(), 64u);

  int kept = 0, divided = 0, smoothed = 0;
  for (int64_t i = 0; i < 64; ++i) {
    const double freq = std::pow(500000.0, -2.0 * i / 128.0);
    const double expected = ScaledFrequency(freq, *config.rope_scaling);
    EXPECT_NEAR(inv_freq[i], expected, 1e-6 * expected) << "i = " << i;
    if (expected == freq) ++kept;
    else if (std::abs(expected - freq / 8.0) < 1e-15) ++divided;
    else ++smoothed;
  }
  // All three branches of the formula occur for these settings.
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(smoothed, 0);
  // The highest frequency is kept and the lowest divided by the factor.
  EXPECT_FLOAT_EQ(inv_freq.front(), 1.0f);
  EXPECT_NEAR(inv_freq.back(), std::pow(500000.0, -126.0 / 128.0) / 8.0, 1e-12);
}

TEST(RopeTest, Llama32ScalingMatchesFormula) {
  ModelConfig config = RopeConfig(64, 500000.0);
  config.rope_scaling = Llama3RopeScaling{32.0, 1.0, 4.0, 8192};
  const std::vector<float> inv_freq = RopeInverseFrequencies(config);
  ASSERT_EQ(inv_freq.size(), 32u);
  for (int64_t i = 0; i < 32; ++i) {
    const double freq = std::pow(500000.0, -2.0 * i / 64.0);
    const double expected = ScaledFrequency(freq, *config.rope_scaling);
    EXPECT_NEAR(inv_freq[i], expected, 1e-6 * expected) << "i = " << i;
  }
}

// A band frequency worked by hand: with head_dim 4 and theta = (4096 / 2pi)^2 the second
// frequency is 2pi / 4096, a wavelength of 4096 between 2048 and 8192, so
// smooth = (8192 / 4096 - 1) / (4 - 1) = 1/3 and the result is (2/3) freq / 8 + (1/3) freq.
TEST(RopeTest, SmoothBandWorkedExample) {
  const double freq = 2 * std::numbers::pi / 4096.0;
  ModelConfig config = RopeConfig(4, 1.0 / (freq * freq));
  config.rope_scaling = Llama3RopeScaling{8.0, 1.0, 4.0, 8192};
  const std::vector<float> inv_freq = RopeInverseFrequencies(config);
  ASSERT_EQ(inv_freq.size(), 2u);
  EXPECT_FLOAT_EQ(inv_freq[0], 1.0f);
  EXPECT_NEAR(inv_freq[1], freq * (2.0 / 3.0 / 8.0 + 1.0 / 3.0), 1e-9);
}

}  // namespace
}  // namespace w8a8
